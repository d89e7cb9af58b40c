//! Cost table (paper Table 5): per method, mean latency and peak memory of federated training
//! (per client-round) and of personalization/inference (per client).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::files::{ensure_dir, write_atomic};
use super::records::{CostRecord, Method, Phase};
use super::table_csv::write_csv;
use super::ReportError;

/// Bytes per GB in the table (the paper's unit; decimal).
const BYTES_PER_GB: f64 = 1e9;

#[derive(Debug, Clone, PartialEq)]
pub struct CostRow {
    pub setup: String,
    pub method: Method,
    pub phase: Phase,
    /// Σ wall seconds / Σ clients over the method's instances of this phase: seconds per
    /// client-round (federated training) or per client (personalization).
    pub mean_latency_seconds: f64,
    /// Largest peak RSS of any instance (the process peak, which bounds one client's peak).
    pub peak_memory_bytes: u64,
    pub instances: usize,
    pub clients: u64,
}

/// One row per (setup, method, phase) present: setups in name order, then the paper's method
/// order, training before inference.
pub fn cost_table(records: &[CostRecord]) -> Result<Vec<CostRow>, ReportError> {
    // (setup, method, phase) → (Σ wall seconds, Σ clients, peak RSS, instances).
    type Acc = (f64, u64, u64, usize);
    let mut acc: BTreeMap<(String, Method, Phase), Acc> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        if !(r.wall_seconds.is_finite() && r.wall_seconds >= 0.0) || r.clients == 0 {
            return Err(ReportError::invalid(
                format!("cost record #{} ({} {})", i + 1, r.method, r.phase),
                format!(
                    "wall_seconds must be finite and ≥ 0 and clients ≥ 1 (got {} s, {} clients)",
                    r.wall_seconds, r.clients
                ),
            ));
        }
        let e = acc
            .entry((r.setup.clone(), r.method, r.phase))
            .or_insert((0.0, 0, 0, 0));
        e.0 += r.wall_seconds;
        e.1 += r.clients;
        e.2 = e.2.max(r.peak_rss_bytes);
        e.3 += 1;
    }
    Ok(acc
        .into_iter()
        .map(
            |((setup, method, phase), (wall, clients, peak, instances))| CostRow {
                setup,
                method,
                phase,
                mean_latency_seconds: wall / clients as f64,
                peak_memory_bytes: peak,
                instances,
                clients,
            },
        )
        .collect())
}

/// Writes `cost.csv` (one row per method × phase) and `cost.md` (the paper's layout: one row
/// per method, training and inference side by side, `-` where a method has no such phase).
pub fn write_cost_table(rows: &[CostRow], dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    ensure_dir(dir)?;
    let csv = dir.join("cost.csv");
    let mut frame = df!(
        "setup" => rows.iter().map(|r| r.setup.as_str()).collect::<Vec<_>>(),
        "method" => rows.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(),
        "phase" => rows.iter().map(|r| r.phase.as_str()).collect::<Vec<_>>(),
        "mean_latency_seconds" => rows.iter().map(|r| r.mean_latency_seconds).collect::<Vec<_>>(),
        "peak_memory_bytes" => rows.iter().map(|r| r.peak_memory_bytes).collect::<Vec<_>>(),
        "instances" => rows.iter().map(|r| r.instances as u64).collect::<Vec<_>>(),
        "clients" => rows.iter().map(|r| r.clients).collect::<Vec<_>>(),
    )
    .map_err(|source| ReportError::Write {
        path: csv.clone(),
        source,
    })?;
    write_csv(&mut frame, &csv)?;
    let md = dir.join("cost.md");
    write_atomic(&md, cost_markdown(rows).as_bytes())?;
    Ok(vec![csv, md])
}

/// The paper's layout per setup; with several setups each gets a `### setup` heading.
fn cost_markdown(rows: &[CostRow]) -> String {
    let mut setups: Vec<&str> = rows.iter().map(|r| r.setup.as_str()).collect();
    setups.dedup();
    let mut out = String::new();
    for setup in &setups {
        if setups.len() > 1 {
            out.push_str(&format!("### {setup}\n\n"));
        }
        out.push_str(
            "| Approach | Federated Training: Mean Latency (s) | Federated Training: Peak Memory (GB) \
             | Inference: Mean Latency (s) | Inference: Peak Memory (GB) |\n\
             |---|---:|---:|---:|---:|\n",
        );
        let rows: Vec<&CostRow> = rows.iter().filter(|r| r.setup == *setup).collect();
        let mut methods: Vec<Method> = rows.iter().map(|r| r.method).collect();
        methods.dedup();
        for method in methods {
            out.push_str(&format!("| {} |", method.label()));
            for phase in Phase::ALL {
                match rows
                    .iter()
                    .find(|r| r.method == method && r.phase == *phase)
                {
                    Some(r) => out.push_str(&format!(
                        " {:.2} | {:.2} |",
                        r.mean_latency_seconds,
                        r.peak_memory_bytes as f64 / BYTES_PER_GB
                    )),
                    None => out.push_str(" - | - |"),
                }
            }
            out.push('\n');
        }
        if setups.len() > 1 {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(method: Method, phase: Phase, wall: f64, rss: u64, clients: u64) -> CostRecord {
        CostRecord {
            setup: String::new(),
            method,
            phase,
            wall_seconds: wall,
            peak_rss_bytes: rss,
            clients,
        }
    }

    #[test]
    fn latency_is_per_client_and_memory_is_the_peak() {
        let rows = cost_table(&[
            rec(
                Method::FedP2eft,
                Phase::Personalization,
                10.0,
                2_000_000_000,
                4,
            ),
            rec(
                Method::FedP2eft,
                Phase::FederatedTraining,
                300.0,
                3_000_000_000,
                90,
            ),
            rec(
                Method::FedP2eft,
                Phase::FederatedTraining,
                60.0,
                3_500_000_000,
                30,
            ),
            rec(Method::Lora, Phase::Personalization, 6.0, 1_000_000_000, 2),
        ])
        .unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].method, rows[0].phase),
            (Method::Lora, Phase::Personalization)
        );
        let ft = &rows[1];
        assert_eq!(ft.phase, Phase::FederatedTraining);
        assert_eq!(ft.mean_latency_seconds, 3.0); // 360 s / 120 client-rounds
        assert_eq!(ft.peak_memory_bytes, 3_500_000_000);
        assert_eq!((ft.instances, ft.clients), (2, 120));
        assert_eq!(rows[2].mean_latency_seconds, 2.5);

        let md = cost_markdown(&rows);
        assert!(md.contains("| LoRA | - | - | 3.00 | 1.00 |"), "{md}");
        assert!(
            md.contains("| FedP2EFT | 3.00 | 3.50 | 2.50 | 2.00 |"),
            "{md}"
        );
    }

    #[test]
    fn zero_clients_is_rejected() {
        let err = cost_table(&[rec(Method::Lora, Phase::Personalization, 1.0, 1, 0)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cost record #1"), "{err}");
    }

    #[test]
    fn writes_csv_and_markdown() {
        let rows = cost_table(&[rec(Method::Lora, Phase::Personalization, 1.0, 1, 1)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let written = write_cost_table(&rows, dir.path()).unwrap();
        let csv = std::fs::read_to_string(&written[0]).unwrap();
        assert!(
            csv.starts_with("setup,method,phase,mean_latency_seconds"),
            "{csv}"
        );
        assert!(csv.contains(",lora,personalization,1.0,1,1,1"), "{csv}");
    }

    #[test]
    fn setups_are_never_averaged_together() {
        let mut a = rec(Method::Lora, Phase::Personalization, 1.0, 1, 1);
        let mut b = rec(Method::Lora, Phase::Personalization, 3.0, 1, 1);
        a.setup = "xnli".into();
        b.setup = "fed_aya".into();
        let rows = cost_table(&[a, b]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].setup.as_str(), rows[0].mean_latency_seconds),
            ("fed_aya", 3.0)
        );
        let md = cost_markdown(&rows);
        assert!(
            md.contains("### fed_aya") && md.contains("### xnli"),
            "{md}"
        );
    }
}
