//! Benchmark (not a test): one BayesTune-LoRA training step (forward + backward + AdamW with
//! clipping, train mode with dropout) on a BERT-base-sized block stack: hidden 768, 12 heads,
//! FFN 3072, r_max 32 on all linears, batch 32 × seq 128, side by side with the same step in
//! PyTorch (`tests/fixtures/gen/bench_bayestune_step.py`, run when `python3 -c "import torch"`
//! works).
//!
//! Each measurement is its own process (so peak RSS is that configuration's alone), and the two
//! sides alternate within every repeat, so a ratio compares runs made seconds apart on the same
//! (shared) machine. Both sides get the same thread count. Reported: per repeat candle and
//! PyTorch steps/s and their ratio (> 1: candle faster), then the median ratio and its range.
//!
//! Knobs (env): BENCH_LAYERS (2), BENCH_BATCH (32), BENCH_SEQ (128), BENCH_STEPS (3 timed, after
//! one warm-up), BENCH_REPEATS (3), BENCH_THREADS (2), BENCH_DTYPES (`f32,bf16`),
//! BENCH_TORCH (`auto` | `0`).
//! Run: `cargo bench --workspace --bench bayestune_step`

mod common;

use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use common::{env, peak_rss_mib};
use stages::fit::step as train;
use stages::fit::{Clip, Regulariser};
use stages::model::bert::{self, BertConfig, BertForSequenceClassification, BertInput};
use stages::optim::{Adam, AdamConfig, ParamGroup};
use stages::peft::bayestune::{self, BayesTuneConfig};
use stages::task::ClassifierBatch;
use stages::task::{Batch, Net};

/// Named trainable parameters.
type Named = Vec<(String, Var)>;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One measurement in this process: mean steps/s over the timed steps, peak RSS (MiB).
fn measure(dtype: DType) -> Res<(f64, f64)> {
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
    // Base in `dtype`; adapters in f32 (PEFT's autocast_adapter_dtype on a bf16 base).
    let mut store = bert::random_init(&cfg, num_labels, 0, &dev, dtype)?;
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
            None,
        )?;
        let dt = t0.elapsed().as_secs_f64();
        eprintln!(
            "  candle {dtype:?} step {step}: {dt:.3} s, loss {:.4}",
            stats.loss
        );
        if step > 0 {
            times.push(dt);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    Ok((1.0 / mean, peak_rss_mib()))
}

/// Parses the `RESULT steps_per_s=… peak_rss_mib=…` line a child prints.
fn parse_result(stdout: &str) -> Option<(f64, f64)> {
    let line = stdout.lines().find(|l| l.starts_with("RESULT "))?;
    let field = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .and_then(|v| v.parse().ok())
    };
    Some((field("steps_per_s=")?, field("peak_rss_mib=")?))
}

fn run_child(cmd: &mut Command) -> Res<(f64, f64)> {
    let out = cmd.output()?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("child failed ({}): {stdout}", out.status).into());
    }
    parse_result(&stdout).ok_or_else(|| format!("no RESULT line in: {stdout}").into())
}

fn torch_available() -> bool {
    std::env::var("BENCH_TORCH").as_deref() != Ok("0")
        && Command::new("python3")
            .args(["-c", "import torch, transformers"])
            .output()
            .is_ok_and(|o| o.status.success())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Res<()> {
    let threads = env("BENCH_THREADS", 2).to_string();
    if let Ok(d) = std::env::var("BENCH_CHILD") {
        let dtype = if d == "bf16" { DType::BF16 } else { DType::F32 };
        let (sps, rss) = measure(dtype)?;
        println!("RESULT steps_per_s={sps:.5} peak_rss_mib={rss:.0}");
        return Ok(());
    }
    let repeats = env("BENCH_REPEATS", 3).max(1);
    let dtypes = std::env::var("BENCH_DTYPES").unwrap_or_else(|_| "f32,bf16".into());
    let torch = torch_available();
    if !torch {
        eprintln!("PyTorch not importable (or BENCH_TORCH=0): candle side only");
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gen/bench_bayestune_step.py"
    );
    let me = std::env::current_exe()?;
    println!(
        "BayesTune-LoRA step, layers={} batch={} seq={} threads={threads}, {} timed steps, {repeats} repeats",
        env("BENCH_LAYERS", 2),
        env("BENCH_BATCH", 32),
        env("BENCH_SEQ", 128),
        env("BENCH_STEPS", 3),
    );
    for dtype in dtypes.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let mut ratios = Vec::new();
        for rep in 0..repeats {
            let (c_sps, c_rss) = run_child(
                Command::new(&me)
                    .env("BENCH_CHILD", dtype)
                    .env("RAYON_NUM_THREADS", &threads),
            )?;
            let line = format!(
                "{dtype} repeat {rep}: candle {c_sps:.4} steps/s ({:.3} s/step, peak RSS {c_rss:.0} MiB)",
                1.0 / c_sps
            );
            if torch {
                let (t_sps, t_rss) = run_child(
                    Command::new("python3")
                        .arg(script)
                        .env("BENCH_DTYPE", dtype)
                        .env("BENCH_THREADS", &threads)
                        .env("OMP_NUM_THREADS", &threads)
                        .env("MKL_NUM_THREADS", &threads),
                )?;
                ratios.push(c_sps / t_sps);
                println!(
                    "{line} | pytorch {t_sps:.4} steps/s ({:.3} s/step, peak RSS {t_rss:.0} MiB) | ratio {:.3}",
                    1.0 / t_sps,
                    c_sps / t_sps
                );
            } else {
                println!("{line}");
            }
        }
        if !ratios.is_empty() {
            let (lo, hi) = ratios
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), r| {
                    (l.min(*r), h.max(*r))
                });
            println!(
                "{dtype}: candle/pytorch throughput ratio median {:.3} (range {lo:.3}–{hi:.3}, {} repeats)",
                median(&mut ratios),
                repeats
            );
        }
    }
    Ok(())
}
