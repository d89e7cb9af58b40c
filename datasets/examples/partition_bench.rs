//! Benchmark: partitions the full XNLI and MasakhaNEWS (both pools, paper defaults) and
//! prints wall time and peak RSS (VmHWM from /proc/self/status).
//!
//! cargo run --release -p datasets --example partition_bench -- <data_root> [out_dir]
//! `<data_root>` holds `xnli/` and `masakhanews/` (e.g. /work/shared/data); outputs go to
//! `out_dir` (default: a fresh directory under the system temp dir, removed afterwards).

use std::path::PathBuf;
use std::time::Instant;

use datasets::{
    partition_masakhanews, partition_xnli, write_partition, MasakhaNewsConfig, XnliConfig,
};

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        dir_size(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(
        args.next()
            .ok_or("usage: partition_bench <data_root> [out_dir]")?,
    );
    let (out, cleanup) = match args.next() {
        Some(o) => (PathBuf::from(o), false),
        None => (
            std::env::temp_dir().join(format!("partition_bench-{}", std::process::id())),
            true,
        ),
    };
    println!(
        "rss at start: {:.1} MiB",
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    for name in ["xnli", "masakhanews"] {
        let input = root.join(name);
        let t = Instant::now();
        let ds = if name == "xnli" {
            partition_xnli(&input, &XnliConfig::default(), 42)?
        } else {
            partition_masakhanews(&input, &MasakhaNewsConfig::default(), 42)?
        };
        let t_part = t.elapsed();
        let summary = write_partition(&ds, &out.join(name))?;
        let clients: usize = summary.pools.iter().map(|p| p.n_clients).sum();
        let rows: usize = summary.pools.iter().map(|p| p.n_train + p.n_test).sum();
        println!(
            "{name}: input {:.1} MiB, {clients} clients, {rows} rows, read+partition {:.2} s, \
             total {:.2} s, output {:.1} MiB, peak RSS so far {:.1} MiB, redraws {}",
            dir_size(&input) as f64 / 1048576.0,
            t_part.as_secs_f64(),
            t.elapsed().as_secs_f64(),
            dir_size(&out.join(name)) as f64 / 1048576.0,
            peak_rss_mib().unwrap_or(f64::NAN),
            summary.redraws,
        );
        for w in &summary.warnings {
            println!("  warning: {w}");
        }
    }
    if cleanup {
        std::fs::remove_dir_all(&out)?;
    }
    Ok(())
}
