//! Reading report inputs from the CSV (or Parquet) files the stages write, with errors that name
//! the file, the row and the column.
//!
//! Expected columns (extra columns are ignored; order does not matter):
//! - classification results: dataset, pool, base_model, method, budget, seed, client_id,
//!   language, correct, total
//! - generation scores: dataset, pool, base_model, method, budget, seed, client_id, language,
//!   rouge1, rougeL, meteor
//! - cost records: method, phase, wall_seconds, peak_rss_bytes, clients (and optionally setup)
//! - rank records: method, budget, client_id, language, module, rank
//! - λ vectors, long format: client_id, language, position (0-based index in the flat vector,
//!   module order), lambda

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use polars::prelude::*;

use super::records::{
    ClassificationResult, CostRecord, GenerationScore, LambdaVector, RankRecord, RunKey,
};
use super::ReportError;

/// The run key of every row (the key columns, in file-order of the checks).
fn run_keys(t: &Table) -> Result<Vec<RunKey>, ReportError> {
    let (dataset, pool, base_model, method) = (
        t.strings("dataset")?,
        t.parsed("pool")?,
        t.parsed("base_model")?,
        t.parsed("method")?,
    );
    let (budget, seed, client_id) = (
        t.parsed("budget")?,
        t.parsed("seed")?,
        t.parsed("client_id")?,
    );
    Ok((0..t.height())
        .map(|i| RunKey {
            dataset: dataset[i].clone(),
            pool: pool[i],
            base_model: base_model[i],
            method: method[i],
            budget: budget[i],
            seed: seed[i],
            client_id: client_id[i],
        })
        .collect())
}

pub fn read_classification_results(path: &Path) -> Result<Vec<ClassificationResult>, ReportError> {
    let t = Table::load(path)?;
    let keys = run_keys(&t)?;
    let language = t.strings("language")?;
    let (correct, total) = (t.parsed("correct")?, t.parsed("total")?);
    Ok((0..t.height())
        .map(|i| ClassificationResult {
            key: keys[i].clone(),
            language: language[i].clone(),
            correct: correct[i],
            total: total[i],
        })
        .collect())
}

pub fn read_generation_scores(path: &Path) -> Result<Vec<GenerationScore>, ReportError> {
    let t = Table::load(path)?;
    let keys = run_keys(&t)?;
    let language = t.strings("language")?;
    let (rouge1, rouge_l, meteor) = (
        t.floats("rouge1")?,
        t.floats("rougeL")?,
        t.floats("meteor")?,
    );
    Ok((0..t.height())
        .map(|i| GenerationScore {
            key: keys[i].clone(),
            language: language[i].clone(),
            rouge1: rouge1[i],
            rouge_l: rouge_l[i],
            meteor: meteor[i],
        })
        .collect())
}

pub fn read_cost_records(path: &Path) -> Result<Vec<CostRecord>, ReportError> {
    let t = Table::load(path)?;
    let (method, phase) = (t.parsed("method")?, t.parsed("phase")?);
    // Optional: files without it hold one setup.
    let setup = if t.has("setup") {
        t.strings("setup")?
    } else {
        vec![String::new(); t.height()]
    };
    let (wall, rss, clients) = (
        t.floats("wall_seconds")?,
        t.parsed("peak_rss_bytes")?,
        t.parsed("clients")?,
    );
    Ok((0..t.height())
        .map(|i| CostRecord {
            setup: setup[i].clone(),
            method: method[i],
            phase: phase[i],
            wall_seconds: wall[i],
            peak_rss_bytes: rss[i],
            clients: clients[i],
        })
        .collect())
}

pub fn read_rank_records(path: &Path) -> Result<Vec<RankRecord>, ReportError> {
    let t = Table::load(path)?;
    let (method, budget, client_id) = (
        t.parsed("method")?,
        t.parsed("budget")?,
        t.parsed("client_id")?,
    );
    let (language, module, rank) = (
        t.strings("language")?,
        t.strings("module")?,
        t.parsed("rank")?,
    );
    Ok((0..t.height())
        .map(|i| RankRecord {
            method: method[i],
            budget: budget[i],
            client_id: client_id[i],
            language: language[i].clone(),
            module: module[i].clone(),
            rank: rank[i],
        })
        .collect())
}

/// λ vectors from long format; each client's positions must be exactly 0..n with one language.
/// Clients come back sorted by id.
pub fn read_lambda_vectors(path: &Path) -> Result<Vec<LambdaVector>, ReportError> {
    let t = Table::load(path)?;
    let (client_id, language): (Vec<u32>, _) = (t.parsed("client_id")?, t.strings("language")?);
    let (position, lambda): (Vec<usize>, Vec<f64>) = (t.parsed("position")?, t.floats("lambda")?);
    // client → (language, first row, position → value)
    let mut clients: BTreeMap<u32, (&str, usize, BTreeMap<usize, f64>)> = BTreeMap::new();
    for i in 0..t.height() {
        let entry =
            clients
                .entry(client_id[i])
                .or_insert((language[i].as_str(), i, BTreeMap::new()));
        if entry.0 != language[i] {
            return Err(t.bad(
                i,
                "language",
                format!(
                    "client `{}` has language `{}` here but `{}` in row {}",
                    client_id[i],
                    language[i],
                    entry.0,
                    entry.1 + 1
                ),
            ));
        }
        if entry.2.insert(position[i], lambda[i]).is_some() {
            return Err(t.bad(
                i,
                "position",
                format!(
                    "duplicate position {} for client `{}`",
                    position[i], client_id[i]
                ),
            ));
        }
    }
    clients
        .into_iter()
        .map(|(client, (lang, _, values))| {
            let n = values.len();
            if values.keys().next_back() != Some(&(n - 1)) {
                return Err(ReportError::invalid(
                    format!("λ vector of client `{client}` in {}", path.display()),
                    format!("positions are not 0..{n} (gaps)"),
                ));
            }
            Ok(LambdaVector {
                client_id: client,
                language: lang.to_string(),
                values: values.into_values().collect(),
            })
        })
        .collect()
}

/// A loaded file and its path, for column access with precise errors.
struct Table {
    path: PathBuf,
    frame: DataFrame,
}

impl Table {
    fn load(path: &Path) -> Result<Self, ReportError> {
        let read_err = |source| ReportError::Read {
            path: path.to_path_buf(),
            source,
        };
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let frame = match ext.as_deref() {
            // Every CSV column is read as text and parsed here, so type errors name the row.
            Some("csv") => CsvReadOptions::default()
                .with_has_header(true)
                .with_infer_schema_length(Some(0))
                .try_into_reader_with_file_path(Some(path.to_path_buf()))
                .and_then(|r| r.finish())
                .map_err(read_err)?,
            Some("parquet") => {
                let file = File::open(path).map_err(|source| ReportError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                ParquetReader::new(file).finish().map_err(read_err)?
            }
            _ => {
                return Err(ReportError::UnsupportedFormat {
                    path: path.to_path_buf(),
                })
            }
        };
        Ok(Table {
            path: path.to_path_buf(),
            frame,
        })
    }

    fn height(&self) -> usize {
        self.frame.height()
    }

    fn bad(&self, row: usize, column: &str, message: String) -> ReportError {
        ReportError::BadValue {
            path: self.path.clone(),
            row: row + 1,
            column: column.to_string(),
            message,
        }
    }

    fn has(&self, name: &str) -> bool {
        self.frame.column(name).is_ok()
    }

    /// The column as text, one `String` per row; nulls are errors.
    fn strings(&self, name: &str) -> Result<Vec<String>, ReportError> {
        let column = self
            .frame
            .column(name)
            .map_err(|_| ReportError::MissingColumn {
                path: self.path.clone(),
                column: name.to_string(),
                found: self
                    .frame
                    .get_column_names()
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let text = column
            .cast(&DataType::String)
            .map_err(|e| self.bad(0, name, format!("cannot read as text: {e}")))?;
        let text = text
            .str()
            .map_err(|e| self.bad(0, name, format!("cannot read as text: {e}")))?;
        text.iter()
            .enumerate()
            .map(|(i, v)| {
                v.map(|s| s.trim().to_string())
                    .ok_or_else(|| self.bad(i, name, "empty value".to_string()))
            })
            .collect()
    }

    /// The column parsed with `FromStr` (enums, integers), naming the row on failure.
    fn parsed<T>(&self, name: &str) -> Result<Vec<T>, ReportError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.strings(name)?
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<T>()
                    .map_err(|e| self.bad(i, name, format!("cannot parse `{s}`: {e}")))
            })
            .collect()
    }

    /// A float column; Parquet floats are taken as stored (no text round trip); NaN and ±∞ are
    /// errors.
    fn floats(&self, name: &str) -> Result<Vec<f64>, ReportError> {
        let values: Vec<f64> = match self.frame.column(name) {
            Ok(c) if c.dtype().is_float() => c
                .cast(&DataType::Float64)
                .and_then(|c| c.f64().cloned())
                .map_err(|e| self.bad(0, name, e.to_string()))?
                .iter()
                .enumerate()
                .map(|(i, v)| v.ok_or_else(|| self.bad(i, name, "empty value".to_string())))
                .collect::<Result<_, _>>()?,
            _ => self.parsed(name)?,
        };
        match values.iter().position(|v| !v.is_finite()) {
            Some(i) => Err(self.bad(i, name, format!("{} is not a finite number", values[i]))),
            None => Ok(values),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::records::run_key;
    use crate::report::records::{BaseModel, Method, Phase, Pool};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_classification_csv() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "acc.csv",
            "dataset,pool,base_model,method,budget,seed,client_id,language,correct,total,extra\n\
             masakhanews,seen,fedavg,fedp2eft,2,42,007,tir,17,27,x\n",
        );
        let r = read_classification_results(&p).unwrap();
        assert_eq!(
            r,
            [ClassificationResult {
                key: run_key(
                    "masakhanews",
                    Pool::Seen,
                    BaseModel::FedAvg,
                    Method::FedP2eft,
                    2,
                    42,
                    7
                ),
                language: "tir".into(),
                correct: 17,
                total: 27,
            }]
        );
    }

    #[test]
    fn missing_column_error_names_file_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "cost.csv",
            "method,phase,wall_seconds,clients\nlora,personalization,3.1,1\n",
        );
        let err = read_cost_records(&p).unwrap_err().to_string();
        assert!(
            err.contains("cost.csv") && err.contains("missing column `peak_rss_bytes`"),
            "{err}"
        );
    }

    #[test]
    fn bad_value_error_names_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "cost.csv",
            "method,phase,wall_seconds,peak_rss_bytes,clients\n\
             lora,personalization,3.1,100,1\n\
             lora,training,3.1,100,1\n",
        );
        let err = read_cost_records(&p).unwrap_err().to_string();
        assert!(
            err.contains("row 2") && err.contains("`phase`") && err.contains("`training`"),
            "{err}"
        );
        let p = write(
            dir.path(),
            "gen.csv",
            "dataset,pool,base_model,method,budget,seed,client_id,language,rouge1,rougeL,meteor\n\
             fed_aya,seen,pretrained,lora,2,42,1,te,0.1,NaN,0.3\n",
        );
        let err = read_generation_scores(&p).unwrap_err().to_string();
        assert!(err.contains("row 1") && err.contains("`rougeL`"), "{err}");
    }

    #[test]
    fn reads_parquet_written_by_polars() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cost.parquet");
        let mut df = df!(
            "method" => ["fedp2eft", "lora"],
            "phase" => ["federated_training", "personalization"],
            "wall_seconds" => [3.36f64, 3.16],
            "peak_rss_bytes" => [3_090_000_000u64, 2_690_000_000],
            "clients" => [30u64, 1],
        )
        .unwrap();
        ParquetWriter::new(File::create(&p).unwrap())
            .finish(&mut df)
            .unwrap();
        let r = read_cost_records(&p).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].method, Method::FedP2eft);
        assert_eq!(r[0].phase, Phase::FederatedTraining);
        assert_eq!(r[0].wall_seconds, 3.36);
        assert_eq!(r[1].peak_rss_bytes, 2_690_000_000);
    }

    #[test]
    fn reads_lambda_vectors_in_long_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "lambda.csv",
            "client_id,language,position,lambda\n2,ur,1,0.5\n2,ur,0,0.25\n1,ar,0,1e-4\n1,ar,1,2\n",
        );
        let v = read_lambda_vectors(&p).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].client_id, v[0].values.clone()), (1, vec![1e-4, 2.0]));
        assert_eq!(
            (v[1].language.as_str(), v[1].values.clone()),
            ("ur", vec![0.25, 0.5])
        );
        let gap = write(
            dir.path(),
            "gap.csv",
            "client_id,language,position,lambda\n1,ar,0,1\n1,ar,2,1\n",
        );
        assert!(read_lambda_vectors(&gap)
            .unwrap_err()
            .to_string()
            .contains("gaps"));
    }

    #[test]
    fn reads_generation_and_rank_csv() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "gen.csv",
            "language,client_id,seed,budget,method,base_model,pool,dataset,meteor,rougeL,rouge1\n\
             te,12,42,16,fedl2p,pretrained,unseen,fed_aya,0.25,0.125,0.5\n",
        );
        let g = read_generation_scores(&p).unwrap();
        assert_eq!(
            (
                g[0].key.method,
                g[0].key.pool,
                g[0].key.budget,
                g[0].key.seed
            ),
            (Method::FedL2p, Pool::Unseen, 16, 42)
        );
        assert_eq!((g[0].meteor, g[0].rouge_l, g[0].rouge1), (0.25, 0.125, 0.5));
        let p = write(
            dir.path(),
            "ranks.csv",
            "method,budget,client_id,language,module,rank\n\
             fedp2eft,2,3,amh,bert.encoder.layer.3.intermediate.dense,4\n\
             fedp2eft,2,3,amh,classifier,-1\n",
        );
        let err = read_rank_records(&p).unwrap_err().to_string();
        assert!(
            err.contains("row 2") && err.contains("`rank`") && err.contains("`-1`"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_extension_is_rejected() {
        let err = read_rank_records(Path::new("ranks.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ranks.json") && err.contains(".csv"), "{err}");
    }
}
