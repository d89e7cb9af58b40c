//! `export [--csv DIR]` (default `results/<manifest name>/`): every result table of a run (CSV
//! through polars, plus the report's Markdown and plots as written), one table describing every
//! finished instance (timings, peak memory) and the cost table (paper Table 5) built from them.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::engine::error::{IoContext, PipelineError, Result};
use crate::engine::manifest::Manifest;
use crate::engine::plan::{DigestCache, Plan, State};
use crate::engine::registry::Registry;
use crate::engine::store::Store;

/// Result tables are the CSV files a stage writes under `tables/` in its outputs.
pub const TABLES_DIR: &str = "tables";

fn polars_err(path: &Path) -> impl Fn(PolarsError) -> PipelineError + '_ {
    move |e| PipelineError::Other(format!("{}: {e}", path.display()))
}

pub fn export_csv(manifest: &Manifest, registry: &Registry, dir: &Path) -> Result<Vec<PathBuf>> {
    let store = Store::new(&manifest.workdir);
    let plan = Plan::build(manifest, registry, &store, &mut DigestCache::default())?;
    std::fs::create_dir_all(dir).at(dir)?;
    let mut written = Vec::new();
    let mut metas = std::collections::HashMap::new();

    let (mut stage, mut instance, mut kind, mut key) = (vec![], vec![], vec![], vec![]);
    let (mut wall, mut rss, mut start, mut resumed) = (vec![], vec![], vec![], vec![]);
    for inst in plan.instances.iter().filter(|i| i.state == State::Done) {
        let k = inst.key.as_deref().expect("done has key");
        let meta = store.read_meta(k)?;
        stage.push(inst.stage.clone());
        instance.push(inst.id.clone());
        kind.push(inst.kind.clone());
        key.push(k.to_string());
        wall.push(meta.wall_seconds);
        rss.push(meta.peak_rss_bytes as f64 / (1024.0 * 1024.0));
        start.push(meta.start_time.clone());
        resumed.push(meta.resumed);
        metas.insert(inst.id.clone(), (meta, store.out_dir(k)));

        let tables = store.out_dir(k).join(TABLES_DIR);
        let Ok(entries) = std::fs::read_dir(&tables) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or_default();
            if matches!(ext, "md" | "svg" | "png") {
                let dest = dir.join(format!(
                    "{}__{}",
                    sanitize(&inst.id),
                    f.file_name().unwrap_or_default().to_string_lossy()
                ));
                std::fs::copy(&f, &dest).at(&dest)?;
                written.push(dest);
                continue;
            }
            if ext != "csv" {
                continue;
            }
            let mut df = CsvReadOptions::default()
                .with_has_header(true)
                .try_into_reader_with_file_path(Some(f.clone()))
                .and_then(|r| r.finish())
                .map_err(polars_err(&f))?;
            let name = format!(
                "{}__{}",
                sanitize(&inst.id),
                f.file_name().unwrap_or_default().to_string_lossy()
            );
            let dest = dir.join(name);
            write_csv(&mut df, &dest)?;
            written.push(dest);
        }
    }
    let mut runs = DataFrame::new_infer_height(vec![
        Column::new("stage".into(), stage),
        Column::new("instance".into(), instance),
        Column::new("kind".into(), kind),
        Column::new("key".into(), key),
        Column::new("wall_seconds".into(), wall),
        Column::new("peak_rss_mib".into(), rss),
        Column::new("start_time".into(), start),
        Column::new("resumed".into(), resumed),
    ])
    .map_err(polars_err(dir))?;
    let dest = dir.join("runs.csv");
    write_csv(&mut runs, &dest)?;
    written.push(dest);
    let costs = crate::cli::export_cost::cost_records(&metas)?;
    if !costs.is_empty() {
        let rows =
            crate::report::cost_table(&costs).map_err(|e| PipelineError::Other(e.to_string()))?;
        written.extend(
            crate::report::write_cost_table(&rows, dir)
                .map_err(|e| PipelineError::Other(e.to_string()))?,
        );
    }
    Ok(written)
}

pub fn write_csv(df: &mut DataFrame, path: &Path) -> Result<()> {
    let mut f = std::fs::File::create(path).at(path)?;
    CsvWriter::new(&mut f).finish(df).map_err(polars_err(path))
}

/// `stage[a=1,b=x]` → `stage_a-1_b-x`, safe as a file name.
pub fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            '[' | ',' => '_',
            ']' => '\0',
            '=' => '-',
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') => c,
            _ => '_',
        })
        .filter(|&c| c != '\0')
        .collect()
}
