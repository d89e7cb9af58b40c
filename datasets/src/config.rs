//! Partition configurations, one struct per dataset. They deserialize straight from a
//! manifest's `params` (unknown keys are errors) and every default is the paper's value
//! (PAPER_NOTES §1), so an empty `params` reproduces the paper's protocol.

use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};

/// Paper §4.1 / PAPER_NOTES §1: Dirichlet concentration of the LDA partition.
pub const DEFAULT_ALPHA: f64 = 0.5;
/// How often a degenerate Dirichlet draw may be repeated before giving up.
pub const DEFAULT_MAX_REDRAWS: u32 = 100;
/// MasakhaNEWS: 10 clients per language per pool (16 × 10 = 160 per pool).
pub const MASAKHANEWS_CLIENTS_PER_LANGUAGE: usize = 10;
/// XNLI: 20 clients per language per pool (15 × 20 = 300 per pool).
pub const XNLI_CLIENTS_PER_LANGUAGE: usize = 20;
/// XNLI: 2,000 train and 500 test examples per language per pool (App. A.1).
pub const XNLI_TRAIN_ROWS_PER_POOL: usize = 2000;
pub const XNLI_TEST_ROWS_PER_POOL: usize = 500;
/// Fed-Aya: per-client 80/20 train/test split [code: `test_ratio=0.2`].
pub const AYA_TEST_FRACTION: f64 = 0.2;
/// Fed-Aya: the unseen pool is client indices 21–27 and 34 in the file's key order
/// [code: `unseen_cids` in SamsungLabs/fedp2eft `src/data/fedaya_dataset.py`].
pub const AYA_UNSEEN_CLIENTS: [usize; 8] = [21, 22, 23, 24, 25, 26, 27, 34];

pub const MASAKHANEWS_LANGUAGES: [&str; 16] = [
    "amh", "eng", "fra", "hau", "ibo", "lin", "lug", "orm", "pcm", "run", "sna", "som", "swa",
    "tir", "xho", "yor",
];
pub const XNLI_LANGUAGES: [&str; 15] = [
    "ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh",
];
pub const AYA_LANGUAGES: [&str; 8] = ["ar", "en", "es", "fr", "pt", "ru", "te", "zh"];

/// Whether every (pool, language) shares one clients × labels Dirichlet matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MatrixSharing {
    /// [code] One matrix per seed, reused for every language, both pools and the test split
    /// (the authors' behaviour, PAPER_NOTES §1).
    #[default]
    Shared,
    /// A fresh matrix per (pool, language), still reused for that unit's test split.
    PerPoolLanguage,
}

/// How a proportion matrix turns into row counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DealingRule {
    /// [code] flwr 0.19 `create_lda_partitions` as used by the authors: equal client sizes
    /// (row j goes to client j mod K), each client's rows drawn one at a time from its label
    /// distribution, without replacement. A client can never end empty when rows ≥ clients.
    #[default]
    Sequential,
    /// Hsu et al. 2019 / NIID-Bench: each label's rows are cut among clients in proportion to
    /// the matrix column (floor of the cumulative sum). Client sizes vary; a client left
    /// without train rows triggers a re-draw of the matrix.
    Proportional,
}

/// The LDA knobs shared by all datasets (flat in each config so manifests stay flat).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LdaParams {
    pub alpha: f64,
    pub matrix: MatrixSharing,
    pub dealing: DealingRule,
    pub max_redraws: u32,
}

impl LdaParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(DatasetError::Config(format!(
                "alpha must be a finite number > 0, got {}",
                self.alpha
            )));
        }
        Ok(())
    }
}

fn default_alpha() -> f64 {
    DEFAULT_ALPHA
}
fn default_max_redraws() -> u32 {
    DEFAULT_MAX_REDRAWS
}
fn default_masakha_languages() -> Vec<String> {
    MASAKHANEWS_LANGUAGES
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_xnli_languages() -> Vec<String> {
    XNLI_LANGUAGES.iter().map(|s| s.to_string()).collect()
}
fn default_aya_languages() -> Vec<String> {
    AYA_LANGUAGES.iter().map(|s| s.to_string()).collect()
}
fn default_masakha_clients() -> usize {
    MASAKHANEWS_CLIENTS_PER_LANGUAGE
}
fn default_xnli_clients() -> usize {
    XNLI_CLIENTS_PER_LANGUAGE
}
fn default_xnli_train_rows() -> usize {
    XNLI_TRAIN_ROWS_PER_POOL
}
fn default_xnli_test_rows() -> usize {
    XNLI_TEST_ROWS_PER_POOL
}
fn default_test_fraction() -> f64 {
    AYA_TEST_FRACTION
}
fn default_unseen_clients() -> Vec<usize> {
    AYA_UNSEEN_CLIENTS.to_vec()
}
fn default_xnli_train_from() -> XnliSplit {
    XnliSplit::Test
}
fn default_xnli_test_from() -> XnliSplit {
    XnliSplit::Dev
}
fn default_aya_seen_clients() -> usize {
    8
}
fn default_aya_unseen_clients() -> usize {
    4
}

fn check_languages(languages: &[String], known: &[&str], what: &str) -> Result<()> {
    if languages.is_empty() {
        return Err(DatasetError::Config(format!(
            "{what}: `languages` is empty"
        )));
    }
    for (i, l) in languages.iter().enumerate() {
        if !known.contains(&l.as_str()) {
            return Err(DatasetError::Config(format!(
                "{what}: unknown language `{l}` (known: {})",
                known.join(", ")
            )));
        }
        if languages[..i].contains(l) {
            return Err(DatasetError::Config(format!(
                "{what}: language `{l}` listed twice"
            )));
        }
    }
    Ok(())
}

fn check_fraction(f: f64, what: &str) -> Result<()> {
    if !(f > 0.0 && f < 1.0) {
        return Err(DatasetError::Config(format!(
            "{what}: test_fraction must be in (0, 1), got {f}"
        )));
    }
    Ok(())
}

/// MasakhaNEWS (paper App. A.1): train = train + dev, test = test; each language's rows
/// shuffled and split in half between the pools, then LDA over the 7 topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasakhaNewsConfig {
    #[serde(default = "default_masakha_languages")]
    pub languages: Vec<String>,
    #[serde(default = "default_masakha_clients")]
    pub clients_per_language: usize,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub matrix: MatrixSharing,
    #[serde(default)]
    pub dealing: DealingRule,
    #[serde(default = "default_max_redraws")]
    pub max_redraws: u32,
    /// Smoke-run cap on a language's train(+dev) rows before the pool split (seeded sample).
    #[serde(default)]
    pub max_train_rows_per_language: Option<usize>,
    /// Smoke-run cap on a language's test rows before the pool split (seeded sample).
    #[serde(default)]
    pub max_test_rows_per_language: Option<usize>,
}

impl Default for MasakhaNewsConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl MasakhaNewsConfig {
    pub fn lda(&self) -> LdaParams {
        LdaParams {
            alpha: self.alpha,
            matrix: self.matrix,
            dealing: self.dealing,
            max_redraws: self.max_redraws,
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_languages(&self.languages, &MASAKHANEWS_LANGUAGES, "masakhanews")?;
        if self.clients_per_language == 0 {
            return Err(DatasetError::Config(
                "masakhanews: clients_per_language must be ≥ 1".into(),
            ));
        }
        self.lda().validate()
    }
}

/// Which XNLI split feeds a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XnliSplit {
    Train,
    Dev,
    Test,
}

impl XnliSplit {
    pub fn as_str(self) -> &'static str {
        match self {
            XnliSplit::Train => "train",
            XnliSplit::Dev => "dev",
            XnliSplit::Test => "test",
        }
    }
}

/// On-disk layout of XNLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum XnliFormat {
    /// `<dir>/{train,dev,test}/<lang>.tsv` with header `premise hypothesis label`
    /// (the layout of `../shared/data/xnli`).
    #[default]
    PerLanguageTsv,
    /// The original XNLI-1.0 release: `<dir>/xnli.{dev,test}.tsv` with columns
    /// `language`, `gold_label`, `sentence1`, `sentence2` (no train split).
    #[serde(rename = "xnli_1_0")]
    Xnli10,
    /// A JSON-lines export of Hugging Face `xnli/all_languages`:
    /// `<dir>/{train,validation,test}.jsonl`, one object per line with `premise` {lang: text},
    /// `hypothesis` {language: [...], translation: [...]}, `label` 0/1/2.
    HfAllLanguagesJsonl,
    /// The same rows as Parquet: `<dir>/{train,validation,test}.parquet` (the hub's export).
    HfAllLanguagesParquet,
}

/// XNLI (paper App. A.1): per language and pool, a seeded sample of 2,000 train and 500 test
/// pairs, independent per language, seen and unseen samples disjoint; then LDA over the
/// 3 labels. `../shared/data` has no train split, so by default train comes from XNLI test
/// (5,010/lang ≥ 2 × 2,000) and test from XNLI dev (2,490/lang ≥ 2 × 500).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XnliConfig {
    #[serde(default)]
    pub format: XnliFormat,
    #[serde(default = "default_xnli_languages")]
    pub languages: Vec<String>,
    #[serde(default = "default_xnli_clients")]
    pub clients_per_language: usize,
    #[serde(default = "default_xnli_train_rows")]
    pub train_rows_per_pool: usize,
    #[serde(default = "default_xnli_test_rows")]
    pub test_rows_per_pool: usize,
    #[serde(default = "default_xnli_train_from")]
    pub train_from: XnliSplit,
    #[serde(default = "default_xnli_test_from")]
    pub test_from: XnliSplit,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub matrix: MatrixSharing,
    #[serde(default)]
    pub dealing: DealingRule,
    #[serde(default = "default_max_redraws")]
    pub max_redraws: u32,
}

impl Default for XnliConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl XnliConfig {
    pub fn lda(&self) -> LdaParams {
        LdaParams {
            alpha: self.alpha,
            matrix: self.matrix,
            dealing: self.dealing,
            max_redraws: self.max_redraws,
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_languages(&self.languages, &XNLI_LANGUAGES, "xnli")?;
        if self.clients_per_language == 0 {
            return Err(DatasetError::Config(
                "xnli: clients_per_language must be ≥ 1".into(),
            ));
        }
        if self.train_rows_per_pool == 0 || self.test_rows_per_pool == 0 {
            return Err(DatasetError::Config(
                "xnli: train_rows_per_pool and test_rows_per_pool must be ≥ 1".into(),
            ));
        }
        self.lda().validate()
    }
}

/// Fed-Aya from FedLLM-Bench's 38-client file (`aya_38c_25k.json`): real clients
/// (annotators), rows outside `languages` dropped, unseen pool = `unseen_clients` (indices in
/// the file's key order), per-client seeded train/test split with `test_fraction` test rows
/// (rounded up, as HF `train_test_split`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedAyaConfig {
    #[serde(default = "default_aya_languages")]
    pub languages: Vec<String>,
    #[serde(default = "default_unseen_clients")]
    pub unseen_clients: Vec<usize>,
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Smoke-run cap on a client's rows (after the language filter, seeded sample).
    #[serde(default)]
    pub max_rows_per_client: Option<usize>,
}

impl Default for FedAyaConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl FedAyaConfig {
    pub fn validate(&self) -> Result<()> {
        check_languages(&self.languages, &AYA_LANGUAGES, "fed_aya")?;
        check_fraction(self.test_fraction, "fed_aya")?;
        if self.max_rows_per_client.is_some_and(|n| n < 2) {
            return Err(DatasetError::Config(
                "fed_aya: max_rows_per_client must be ≥ 2 (one train and one test row)".into(),
            ));
        }
        Ok(())
    }
}

/// The real Fed-Aya test sets (`aya_test_datasets.json`, 8 languages × 20 pairs) made into a
/// small generation dataset: all pairs dealt by LDA (label = language) among
/// `seen_clients + unseen_clients` clients (the first `seen_clients` form the seen pool),
/// then a seeded per-client train/test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AyaTestSetsConfig {
    #[serde(default = "default_aya_languages")]
    pub languages: Vec<String>,
    #[serde(default = "default_aya_seen_clients")]
    pub seen_clients: usize,
    #[serde(default = "default_aya_unseen_clients")]
    pub unseen_clients: usize,
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dealing: DealingRule,
    #[serde(default = "default_max_redraws")]
    pub max_redraws: u32,
}

impl Default for AyaTestSetsConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl AyaTestSetsConfig {
    pub fn lda(&self) -> LdaParams {
        LdaParams {
            alpha: self.alpha,
            // One unit (all pairs), so sharing makes no difference.
            matrix: MatrixSharing::Shared,
            dealing: self.dealing,
            max_redraws: self.max_redraws,
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_languages(&self.languages, &AYA_LANGUAGES, "aya_test_sets")?;
        check_fraction(self.test_fraction, "aya_test_sets")?;
        if self.seen_clients == 0 || self.unseen_clients == 0 {
            return Err(DatasetError::Config(
                "aya_test_sets: seen_clients and unseen_clients must be ≥ 1".into(),
            ));
        }
        self.lda().validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_papers_values() {
        let m = MasakhaNewsConfig::default();
        assert_eq!(m.languages.len(), 16);
        assert_eq!(m.clients_per_language, 10);
        assert_eq!(m.alpha, 0.5);
        assert_eq!(m.matrix, MatrixSharing::Shared);
        let x = XnliConfig::default();
        assert_eq!(
            (
                x.clients_per_language,
                x.train_rows_per_pool,
                x.test_rows_per_pool
            ),
            (20, 2000, 500)
        );
        assert_eq!(
            (x.train_from, x.test_from),
            (XnliSplit::Test, XnliSplit::Dev)
        );
        let a = FedAyaConfig::default();
        assert_eq!(a.unseen_clients, vec![21, 22, 23, 24, 25, 26, 27, 34]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        assert!(serde_json::from_str::<XnliConfig>(r#"{"alpah": 0.1}"#).is_err());
        let c: XnliConfig =
            serde_json::from_str(r#"{"alpha": 0.0, "matrix": "per_pool_language"}"#).unwrap();
        assert!(c.validate().is_err());
        let c: MasakhaNewsConfig = serde_json::from_str(r#"{"languages": ["xx"]}"#).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("xx"));
    }
}
