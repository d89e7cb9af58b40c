//! Scoring: accuracy, ROUGE-1/L (rouge_score parity) and METEOR (NLTK parity).
//!
//! PAPER_NOTES §7. Generation metrics reproduce the references the paper's code calls, on
//! the same strings, to within 1e-6 (checked by `tests/metrics_parity.rs` against fixtures
//! from `tests/fixtures/gen/metrics_parity.py`):
//! - ROUGE-1 / ROUGE-L F1: `rouge_score` 0.1.2 `RougeScorer(["rouge1", "rougeL"])`
//!   `.score(reference, prediction)`, defaults (no stemmer). Non-Latin text scores 0 like the
//!   reference; [`RougeTokenizer::Multilingual`] is an opt-in, non-reference alternative.
//! - METEOR: nltk 3.10.4 `single_meteor_score(word_tokenize(reference, preserve_line=True),
//!   word_tokenize(prediction, preserve_line=True))` with WordNet 3.0 ([`Wordnet`]).
//!
//! Per-sample scores are averaged within each language ([`mean_per_language`]).

mod accuracy;
mod error;
mod meteor;
mod pytext;
mod rouge;
mod treebank;
mod wordnet;

use std::collections::BTreeMap;

pub use accuracy::{client_accuracy, pooled_accuracy_per_language, AccuracyCounts};
pub use error::MetricsError;
pub use meteor::{Meteor, MeteorParams};
pub use rouge::{rouge1_f1, rouge_l_f1, rouge_tokens, RougeTokenizer};
pub use treebank::word_tokenize;
pub use wordnet::{Wordnet, DEFAULT_WORDNET_DIR, WORDNET_DIR_ENV};

/// A generation metric.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Metric {
    #[serde(rename = "rouge1")]
    Rouge1,
    #[serde(rename = "rougeL")]
    RougeL,
    #[serde(rename = "meteor")]
    Meteor,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::Meteor, Metric::Rouge1, Metric::RougeL];

    /// The name used in result tables and manifests (rouge_score's names for ROUGE).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Rouge1 => "rouge1",
            Metric::RougeL => "rougeL",
            Metric::Meteor => "meteor",
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Metric {
    type Err = MetricsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| MetricsError::UnknownMetric(s.to_owned()))
    }
}

/// How to score. `wordnet` is required when METEOR is requested.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScoreOptions<'a> {
    pub wordnet: Option<&'a Wordnet>,
    pub rouge_tokenizer: RougeTokenizer,
    pub meteor: MeteorParams,
}

/// Scores of one prediction/reference pair; a metric not requested is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairScores {
    pub rouge1: Option<f64>,
    #[serde(rename = "rougeL")]
    pub rouge_l: Option<f64>,
    pub meteor: Option<f64>,
}

impl PairScores {
    pub fn get(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::Rouge1 => self.rouge1,
            Metric::RougeL => self.rouge_l,
            Metric::Meteor => self.meteor,
        }
    }
}

/// Scores each `preds[i]` against `refs[i]`.
pub fn score_pairs(
    preds: &[String],
    refs: &[String],
    metrics: &[Metric],
    opts: &ScoreOptions<'_>,
) -> Result<Vec<PairScores>, MetricsError> {
    if preds.len() != refs.len() {
        return Err(MetricsError::LengthMismatch {
            what: "score_pairs",
            left_name: "predictions",
            left: preds.len(),
            right_name: "references",
            right: refs.len(),
        });
    }
    let want = |m| metrics.contains(&m);
    let meteor = if want(Metric::Meteor) {
        let wordnet = opts.wordnet.ok_or(MetricsError::WordnetNotGiven)?;
        Some(Meteor::new(wordnet, opts.meteor))
    } else {
        None
    };
    let rouge = want(Metric::Rouge1) || want(Metric::RougeL);
    preds
        .iter()
        .zip(refs)
        .map(|(pred, reference)| {
            let mut scores = PairScores::default();
            if rouge {
                let target = rouge_tokens(reference, opts.rouge_tokenizer);
                let prediction = rouge_tokens(pred, opts.rouge_tokenizer);
                if want(Metric::Rouge1) {
                    scores.rouge1 = Some(rouge1_f1(&target, &prediction));
                }
                if want(Metric::RougeL) {
                    scores.rouge_l = Some(rouge_l_f1(&target, &prediction));
                }
            }
            if let Some(meteor) = &meteor {
                let r = word_tokenize(reference)?;
                let h = word_tokenize(pred)?;
                scores.meteor = Some(meteor.score_tokens(&r, &h)?);
            }
            Ok(scores)
        })
        .collect()
}

/// Mean of each metric over one language's samples.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LanguageMeans {
    pub n: usize,
    pub rouge1: Option<f64>,
    #[serde(rename = "rougeL")]
    pub rouge_l: Option<f64>,
    pub meteor: Option<f64>,
}

/// Per-sample scores averaged within language (PAPER_NOTES §7); `languages[i]` is the
/// language of `scores[i]`. A metric is `Some` only if every sample of the language has it.
pub fn mean_per_language(
    languages: &[String],
    scores: &[PairScores],
) -> Result<BTreeMap<String, LanguageMeans>, MetricsError> {
    if languages.len() != scores.len() {
        return Err(MetricsError::LengthMismatch {
            what: "mean_per_language",
            left_name: "languages",
            left: languages.len(),
            right_name: "scored pairs",
            right: scores.len(),
        });
    }
    let mut groups: BTreeMap<&str, Vec<&PairScores>> = BTreeMap::new();
    for (language, s) in languages.iter().zip(scores) {
        groups.entry(language).or_default().push(s);
    }
    let mean = |group: &[&PairScores], metric: Metric| -> Option<f64> {
        let values: Option<Vec<f64>> = group.iter().map(|s| s.get(metric)).collect();
        values.map(|v| v.iter().sum::<f64>() / v.len() as f64)
    };
    Ok(groups
        .into_iter()
        .map(|(language, group)| {
            let means = LanguageMeans {
                n: group.len(),
                rouge1: mean(&group, Metric::Rouge1),
                rouge_l: mean(&group, Metric::RougeL),
                meteor: mean(&group, Metric::Meteor),
            };
            (language.to_owned(), means)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rouge_only_scoring_needs_no_wordnet_and_means_group_by_language() {
        let preds = strings(&["the cat sat", "a b", "北京"]);
        let refs = strings(&["the cat sat", "a c", "北京"]);
        let opts = ScoreOptions::default();
        let scores = score_pairs(&preds, &refs, &[Metric::Rouge1, Metric::RougeL], &opts).unwrap();
        assert_eq!(scores[0].rouge1, Some(1.0));
        assert_eq!(scores[1].rouge_l, Some(0.5));
        assert_eq!(scores[2].rouge1, Some(0.0)); // reference tokenizer drops Han text
        assert_eq!(scores[0].meteor, None);
        let langs = strings(&["en", "en", "zh"]);
        let means = mean_per_language(&langs, &scores).unwrap();
        assert_eq!(means["en"].n, 2);
        assert_eq!(means["en"].rouge1, Some(0.75));
        assert_eq!(means["zh"].meteor, None);
    }

    #[test]
    fn meteor_without_wordnet_and_length_mismatch_are_errors() {
        let one = strings(&["x"]);
        let err = score_pairs(&one, &one, &[Metric::Meteor], &ScoreOptions::default());
        assert!(matches!(err, Err(MetricsError::WordnetNotGiven)));
        let err = score_pairs(&one, &[], &[Metric::Rouge1], &ScoreOptions::default());
        assert!(matches!(err, Err(MetricsError::LengthMismatch { .. })));
    }

    #[test]
    fn metric_names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(m.name().parse::<Metric>().unwrap(), m);
        }
        assert!("bleu".parse::<Metric>().is_err());
    }
}
