//! Benchmark (not a test): one BayesTune-LoRA training step (forward + backward + AdamW with
//! clipping) on a BERT-base-sized block stack: hidden 768, 12 heads, FFN 3072, r_max 32 on all
//! linears, batch 32 × seq 128. Compare with `tests/fixtures/gen/bench_bayestune_step.py`.
//!
//! Knobs (env): BENCH_LAYERS (default 2), BENCH_BATCH (32), BENCH_SEQ (128), BENCH_STEPS (3).
//! Run: `cargo bench -p stages --bench bayestune_step`

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use stages::model::bert::{self, BertConfig, BertForSequenceClassification, BertInput};
use stages::optim::{Adam, AdamConfig, ParamGroup};
use stages::peft::bayestune::{self, BayesTuneConfig};
use stages::task::{Batch, Net};
use stages::train::{self, ClassifierBatch, Clip, Regulariser};

/// Named trainable parameters.
type Named = Vec<(String, Var)>;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let layers = env("BENCH_LAYERS", 2);
    let batch = env("BENCH_BATCH", 32);
    let seq = env("BENCH_SEQ", 128);
    let steps = env("BENCH_STEPS", 3);
    let dev = Device::Cpu;
    let mut cfg = BertConfig::tiny(1000);
    cfg.hidden_size = 768;
    cfg.num_attention_heads = 12;
    cfg.intermediate_size = 3072;
    cfg.num_hidden_layers = layers;
    cfg.max_position_embeddings = 512;
    cfg.hidden_dropout_prob = 0.1;
    cfg.attention_probs_dropout_prob = 0.1;
    let num_labels = 3;
    let mut store = bert::random_init(&cfg, num_labels, 0, &dev, DType::F32)?;
    let mods = cfg.linear_modules(num_labels);
    let bt = BayesTuneConfig::default();
    bayestune::add_bayestune(&mut store, &mods, &bt, 1, DType::F32)?;
    let model = BertForSequenceClassification::load(&store, &cfg, &bt.spec())?;

    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| (i * 7919 % 999 + 1) as u32)
        .collect();
    let input = BertInput {
        input_ids: Tensor::from_vec(ids, (batch, seq), &dev)?,
        attention_mask: Tensor::ones((batch, seq), DType::U32, &dev)?,
        token_type_ids: Tensor::zeros((batch, seq), DType::U32, &dev)?,
    };
    let labels: Vec<u32> = (0..batch).map(|i| (i % num_labels) as u32).collect();
    let batch_t = ClassifierBatch {
        input,
        labels: Tensor::from_vec(labels, batch, &dev)?,
    };
    let (ab, lam): (Named, Named) = store
        .trainable()
        .into_iter()
        .partition(|(n, _)| !n.ends_with("lora_lambda"));
    let clip_vars: Vec<Var> = ab.iter().map(|(_, v)| v.clone()).collect();
    let clip_refs: Vec<&Var> = clip_vars.iter().collect();
    let mut opt = Adam::new(
        AdamConfig::adamw(),
        vec![
            ParamGroup {
                params: ab,
                lr: 1e-4,
                weight_decay: 0.0,
            },
            ParamGroup {
                params: lam,
                lr: 1e-2,
                weight_decay: 0.0,
            },
        ],
    )?;
    let reg = Regulariser::BayesTune {
        store: &store,
        modules: &mods,
        n_train: 2000,
    };
    let net = Net::Bert(model);
    let batch_t = Batch::Classifier(batch_t);
    let mut times = Vec::new();
    for step in 0..=steps {
        let t0 = Instant::now();
        let (stats, _) = train::train_step(
            &net,
            std::slice::from_ref(&batch_t),
            reg,
            &mut opt,
            Some(Clip {
                vars: &clip_refs,
                max_norm: 1.0,
            }),
            Some(step as u64),
        )?;
        let dt = t0.elapsed().as_secs_f64();
        eprintln!("step {step}: {dt:.3} s, loss {:.4}", stats.loss);
        if step > 0 {
            times.push(dt);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "rust-candle layers={layers} batch={batch} seq={seq}: {:.4} steps/s ({mean:.3} s/step), peak RSS {:.0} MiB",
        1.0 / mean,
        peak_rss_mib()
    );
    Ok(())
}
