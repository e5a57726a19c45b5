#!/usr/bin/env python3
"""PyTorch reference for `tinygpt bench train`: the same GPT, batch and update, timed the way the
original project trains (bf16 autocast, scaled_dot_product_attention, fused AdamW).

The model mirrors tinygpt's GPT-2 style presets: learned positions, pre-LayerNorm blocks, exact
GELU, biases, tied embeddings, init std C^-1/2 with residual projections scaled by (2L)^-1/2.
Data: random token ids with an end-of-text (id 0) about every 200 tokens, as the Rust benchmark.
`--mask document` passes the document-causal mask to SDPA (what the original's attention does);
`--mask causal` uses is_causal=True (flash attention; an upper bound that ignores story boundaries).
Prints one human line, then one JSON object on the last line.
"""
import argparse, json, math, time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {  # n_layer, n_head, n_embd, block_size, vocab_size
    "seed-61m": (12, 4, 512, 512, 50304),
    "small": (6, 6, 288, 256, 4096),
    "tiny": (4, 4, 128, 256, 4096),
}


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.c_attn, self.attn_proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.c_fc, self.mlp_proj = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x, mask):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, c, block_size, vocab):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, c), nn.Embedding(block_size, c)
        self.h = nn.ModuleList(Block(c, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(c)
        std = c ** -0.5
        for name, p in self.named_parameters():
            if p.dim() == 2:
                scale = (2 * n_layer) ** -0.5 if name.endswith("proj.weight") else 1.0
                nn.init.normal_(p, 0.0, std * scale)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, pos, mask, targets):
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x, mask)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # tied lm_head
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def synthetic_batch(b, t, vocab, device):
    g = torch.Generator().manual_seed(7)
    rows = torch.randint(1, vocab, (b, t + 1), generator=g)
    rows[torch.rand(b, t + 1, generator=g) < 0.005] = 0
    x, y = rows[:, :-1], rows[:, 1:]
    # Documents start at row start and at every EOS (id 0), as tinygpt's loader.
    doc = torch.cumsum((x == 0).long(), dim=1)
    pos = torch.zeros_like(x)
    for i in range(b):
        p = 0
        for j in range(t):
            if j > 0 and x[i, j] == 0:
                p = 0
            pos[i, j] = p
            p += 1
    return x.to(device), y.to(device), doc.to(device), pos.to(device)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="seed-61m", choices=PRESETS)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--mask", default="document", choices=["document", "causal"])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    n_layer, n_head, c, t, vocab = PRESETS[a.preset]
    torch.manual_seed(1337)
    model = GPT(n_layer, n_head, c, t, vocab).to(device)
    if a.compile:
        model = torch.compile(model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8, fused=(device == "cuda"))
    x, y, doc, pos = synthetic_batch(a.batch_size, t, vocab, device)
    mask = None
    if a.mask == "document":
        causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
        mask = ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]  # (B, 1, T, T), built once per batch
    amp = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=(a.dtype == "bf16"))

    def step():
        with amp:
            loss = model(x, pos, mask, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    losses = [step().item() for _ in range(a.warmup_steps)]
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    losses.append(loss.item())
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters()) - t * c  # without wpe, as tinygpt
    flops_per_token = 6 * n_params + 12 * n_layer * c * t
    tokens_per_s = a.batch_size * t * a.steps / seconds
    mfu = tokens_per_s * flops_per_token / (a.peak_tflops * 1e12)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    print(f"torch {torch.__version__} {a.preset} {a.dtype} mask={a.mask} compile={a.compile}: batch {a.batch_size} x {t}, "
          f"{seconds * 1e3 / a.steps:.1f} ms/step, {tokens_per_s:.0f} tokens/s, MFU {100 * mfu:.1f}%, "
          f"peak memory {peak_mem:.1f} GiB (loss {losses[0]:.3f} -> {losses[-1]:.3f})")
    print(json.dumps({"impl": "pytorch", "mask": a.mask, "dtype": a.dtype, "compile": a.compile, "tokens_per_s": tokens_per_s,
                      "mfu": mfu, "step_ms": seconds * 1e3 / a.steps, "peak_mem_gib": peak_mem}))


if __name__ == "__main__":
    main()
