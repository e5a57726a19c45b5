#!/usr/bin/env python3
"""Loads the exports written by `cargo run --example hf_fixture -- DIR` with Hugging Face
transformers and compares their logits with tinygpt's (expected.json). Exit status 1 on a mismatch."""
import json, sys

import torch
from transformers import AutoModelForCausalLM

root = sys.argv[1]
expected = json.load(open(f"{root}/expected.json"))
ok = True
for name, ref in expected.items():
    model = AutoModelForCausalLM.from_pretrained(f"{root}/{name}", torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ref["ids"]])).logits[0]
    diff = (logits - torch.tensor(ref["logits"])).abs().max().item()
    good = diff < 1e-3
    ok &= good
    print(f"{name:>12} ({type(model).__name__}): max |logit difference| = {diff:.2e} {'ok' if good else 'MISMATCH'}")
sys.exit(0 if ok else 1)
