//! Benchmark (not a test): seconds per federated client-round of full fine-tuning, as
//! `base/fedavg` runs it — a real `FedAvgClient` round (copy the global weights in, fresh
//! AdamW, `epochs` shuffled passes with dropout, export the weights) on synthetic examples that
//! tokenize to exactly `seq` tokens.
//!
//! Configurations (BENCH_MODELS, comma-separated, default `smoke,bert-base`):
//! - `smoke`: the smoke manifest's model (hidden 32, 2 layers, 4 heads, FFN 64, vocab 400),
//!   batch 8 × seq 64, 20 examples (a smoke client's shard), 2 epochs;
//! - `bert-base`: mBERT-sized (hidden 768, 12 layers, 12 heads, FFN 3072, vocab 119547),
//!   batch 32 × seq 128 (PAPER_NOTES §2: XNLI), BENCH_EXAMPLES examples (64 = 2 batches), 2
//!   epochs.
//!
//! Knobs (env): BENCH_MODELS, BENCH_EXAMPLES (64), BENCH_LAYERS (12, bert-base only),
//! BENCH_ROUNDS (timed rounds; default 5 smoke, 1 bert-base), BENCH_WARMUP (untimed rounds
//! first, bert-base only; smoke always 1, default 0), BENCH_THREADS (2). The paper's Table 5 reports, on one A100, a mean federated-training latency per client
//! of 3.36 s for FedP2EFT on XNLI (mBERT); the ratio printed is ours / 3.36 s, a yardstick to
//! revisit on a GPU (the workloads differ: their figure is a PSG client round).
//! Run: `cargo bench --workspace --bench client_round`

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Device};
use common::{env, peak_rss_mib};
use datasets::Example;
use stages::fit::LocalSgdConfig;
use stages::fl::engine::{ClientRound, LocalTrainer};
use stages::fl::fedavg_client::FedAvgClient;
use stages::model::bert::{random_init, BertConfig};
use stages::peft::AdapterSpec;
use stages::task::{ClassifierModel, TaskModel};
use stages::tokenize::{train_wordpiece, TextTokenizer};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Table 5, XNLI (mBERT), FedP2EFT federated training, mean latency (s) on one A100.
const PAPER_CLIENT_LATENCY_S: f64 = 3.36;

struct Setting {
    name: &'static str,
    cfg: BertConfig,
    examples: usize,
    batch: usize,
    seq: usize,
    rounds: usize,
    /// Untimed rounds first (allocator and page warm-up).
    warmup: usize,
}

fn settings() -> Vec<Setting> {
    let wanted = std::env::var("BENCH_MODELS").unwrap_or_else(|_| "smoke,bert-base".into());
    let mut out = Vec::new();
    for name in wanted.split(',').map(str::trim) {
        match name {
            "smoke" => {
                let mut cfg = BertConfig::tiny(400);
                cfg.max_position_embeddings = 512;
                out.push(Setting {
                    name: "smoke",
                    cfg,
                    examples: 20,
                    batch: 8,
                    seq: 64,
                    rounds: env("BENCH_ROUNDS", 5),
                    warmup: 1,
                });
            }
            "bert-base" => {
                let mut cfg = BertConfig::tiny(119_547);
                cfg.hidden_size = 768;
                cfg.num_hidden_layers = env("BENCH_LAYERS", 12);
                cfg.num_attention_heads = 12;
                cfg.intermediate_size = 3072;
                cfg.max_position_embeddings = 512;
                out.push(Setting {
                    name: "bert-base",
                    cfg,
                    examples: env("BENCH_EXAMPLES", 64),
                    batch: 32,
                    seq: 128,
                    rounds: env("BENCH_ROUNDS", 1),
                    warmup: env("BENCH_WARMUP", 0),
                });
            }
            other => eprintln!("unknown BENCH_MODELS entry `{other}` (smoke, bert-base): skipped"),
        }
    }
    out
}

/// `n` examples of more than `seq` words from a 300-word vocabulary (truncated to `seq`).
fn examples(n: usize, seq: usize) -> Vec<Example> {
    (0..n)
        .map(|i| Example {
            text_a: (0..seq + 8)
                .map(|j| format!("w{}", (i * 31 + j * 7) % 300))
                .collect::<Vec<_>>()
                .join(" "),
            text_b: None,
            label_id: Some((i % 3) as u32),
            language: "eng".into(),
        })
        .collect()
}

fn run(s: &Setting) -> Res<()> {
    let data = examples(s.examples, s.seq);
    let texts: Vec<&str> = data.iter().map(|e| e.text_a.as_str()).collect();
    let mut tok = TextTokenizer::new(train_wordpiece(&texts, 400)?, "[PAD]")?;
    tok.set_max_len(s.seq)?;
    let mut store = random_init(&s.cfg, 3, 0, &Device::Cpu, DType::F32)?;
    store.set_trainable(|_| true)?;
    let task = TaskModel::Classifier(ClassifierModel {
        config: s.cfg.clone(),
        max_len: s.seq,
        store,
        tokenizer: tok,
        tokenizer_json: String::new(),
    });
    let net = task.net(task.store(), &AdapterSpec::NONE)?;
    let sgd = LocalSgdConfig::epochs(5e-5, 0.0, 2, s.batch);
    let shard = data.clone();
    let mut client = FedAvgClient::new(task, net, sgd, Box::new(move |_| Ok(shard.clone())), None)?;
    let mut global: BTreeMap<_, _> = client.shared_weights()?;
    let mut times = Vec::new();
    for round in 0..(s.warmup + s.rounds.max(1)) as u64 {
        let t0 = Instant::now();
        let up = client.train(ClientRound {
            round,
            client: 0,
            seed: round,
            global: &global,
            persistent: None,
        })?;
        let dt = t0.elapsed().as_secs_f64();
        eprintln!(
            "  {} round {round}: {dt:.3} s, mean loss {:.4}",
            s.name, up.mean_loss
        );
        global = up.weights;
        if round >= s.warmup as u64 {
            times.push(dt);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let steps = 2 * s.examples.div_ceil(s.batch);
    println!(
        "{}: layers={} hidden={} batch={} seq={} examples={} ({steps} steps/round): {mean:.3} s/client-round ({:.3} s/step), peak RSS {:.0} MiB, ratio to paper Table 5 ({PAPER_CLIENT_LATENCY_S} s on A100) {:.2}",
        s.name,
        s.cfg.num_hidden_layers,
        s.cfg.hidden_size,
        s.batch,
        s.seq,
        s.examples,
        mean / steps as f64,
        peak_rss_mib(),
        mean / PAPER_CLIENT_LATENCY_S
    );
    Ok(())
}

fn main() -> Res<()> {
    // Same thread count as the training-step benchmark (set before rayon's pool starts).
    std::env::set_var("RAYON_NUM_THREADS", env("BENCH_THREADS", 2).to_string());
    for s in settings() {
        run(&s)?;
    }
    Ok(())
}
