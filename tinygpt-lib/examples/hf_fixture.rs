//! Writes Hugging Face exports of small tinygpt models plus the logits tinygpt computes for a
//! fixed story, for `scripts/hf_check.py` to compare with `transformers` (which this machine
//! may not have: the check runs wherever PyTorch and transformers are installed).
//!
//!   cargo run --release --example hf_fixture -- OUT_DIR [stories260K.bin]

use std::path::PathBuf;

use tinygpt::candle_core::{Device, Tensor};
use tinygpt::model::{hf, llama2c, Gpt, GptConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: hf_fixture OUT_DIR [stories260K.bin]"))?,
    );
    let mut models = vec![
        (
            "gpt2-style",
            Gpt::new(&GptConfig::gpt2(2, 4, 64, 64, 300), 1, &Device::Cpu)?,
        ),
        (
            "gpt2-untied",
            Gpt::new(
                &GptConfig {
                    tied_embeddings: false,
                    ..GptConfig::gpt2(2, 4, 64, 64, 300)
                },
                2,
                &Device::Cpu,
            )?,
        ),
        (
            "llama-style",
            Gpt::new(&GptConfig::llama(2, 4, 2, 64, 96, 64, 300), 3, &Device::Cpu)?,
        ),
    ];
    if let Some(bin) = args.next() {
        models.push((
            "stories260K",
            llama2c::load(std::path::Path::new(&bin), &Device::Cpu)?,
        ));
    }
    let ids: Vec<u32> = vec![1, 17, 42, 99, 5, 250, 3, 77, 12, 64, 200, 9];
    let mut expected = serde_json::Map::new();
    for (name, model) in &models {
        let dir = out.join(name);
        hf::export(model, None, &dir)?;
        let n = ids.len();
        let row = |v: Vec<u32>| Tensor::from_vec(v, (1, n), &Device::Cpu);
        let logits = model.forward(
            &row(ids.clone())?,
            &row(vec![0; n])?,
            &row((0..n as u32).collect())?,
        )?;
        let logits: Vec<Vec<f32>> = logits.squeeze(0)?.to_vec2()?;
        expected.insert(
            name.to_string(),
            serde_json::json!({ "ids": ids, "logits": logits }),
        );
    }
    std::fs::write(out.join("expected.json"), serde_json::to_string(&expected)?)?;
    println!(
        "wrote {} exports and expected.json to {}",
        models.len(),
        out.display()
    );
    Ok(())
}
