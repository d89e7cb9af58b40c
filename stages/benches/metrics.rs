//! Throughput of stages::metrics on the parity pairs (both fixture files, the same pairs the
//! Python script times): ROUGE-1 + ROUGE-L + METEOR including tokenization, WordNet loaded
//! once beforehand. Prints pairs/second (best of 3 runs) and the WordNet load time.
//!
//! Run: `cargo bench -p stages --bench metrics` (needs scripts/install-wordnet.sh).

use std::path::PathBuf;
use std::time::Instant;

use stages::metrics::{score_pairs, Metric, ScoreOptions, Wordnet};

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics");
    let mut preds = Vec::new();
    let mut refs = Vec::new();
    for name in ["parity.jsonl", "parity_heldout.jsonl"] {
        let text = std::fs::read_to_string(dir.join(name)).expect("fixture file");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("fixture JSON");
            preds.push(v["pred"].as_str().expect("pred").to_owned());
            refs.push(v["ref"].as_str().expect("ref").to_owned());
        }
    }

    let t0 = Instant::now();
    let wordnet = match Wordnet::load_default() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("metrics bench: {e}");
            std::process::exit(1);
        }
    };
    let load = t0.elapsed().as_secs_f64();

    let opts = ScoreOptions {
        wordnet: Some(&wordnet),
        ..Default::default()
    };
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let scores = score_pairs(&preds, &refs, &Metric::ALL, &opts).expect("scoring");
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(scores);
    }
    println!(
        "rust: {} pairs, best of 3: {best:.3} s = {:.1} pairs/s (rouge1 + rougeL + meteor incl. tokenization); WordNet load {load:.3} s",
        preds.len(),
        preds.len() as f64 / best
    );
}
