//! ROUGE-1 and ROUGE-L F1 as `rouge_score` 0.1.2 computes them with its defaults
//! (`RougeScorer(["rouge1", "rougeL"])`, no stemmer) — PAPER_NOTES §7 — plus an opt-in
//! multilingual tokenization for scripts the reference tokenizer drops.

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

use super::pytext::py_lower;

/// How ROUGE splits text into tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RougeTokenizer {
    /// `rouge_score`'s tokenizer (the reference, used for the paper's tables): lowercase, then
    /// keep the runs of `[a-z0-9]`. Text in non-Latin scripts yields no tokens and scores 0,
    /// exactly as in the paper's zh/ar/te/ru columns.
    #[default]
    RougeScore,
    /// Not the reference — for users who want meaningful numbers in any script: NFKC,
    /// lowercase, then the Unicode word segmentation of UAX #29 (words that contain a letter
    /// or digit; each Han ideograph and kana is its own token). Scripts written without
    /// spaces and without UAX #29 word rules (Thai, Lao, Khmer) come out as whole runs.
    Multilingual,
}

/// The tokens `tokenizer` gives for `text`.
pub fn rouge_tokens(text: &str, tokenizer: RougeTokenizer) -> Vec<String> {
    match tokenizer {
        RougeTokenizer::RougeScore => {
            // rouge_score: text.lower(); re.sub("[^a-z0-9]+", " "); split; keep ^[a-z0-9]+$.
            // That is exactly the maximal [a-z0-9] runs of the lowercased text.
            let lower = py_lower(text);
            lower
                .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        }
        RougeTokenizer::Multilingual => {
            let normalized: String = py_lower(&text.nfkc().collect::<String>());
            normalized.unicode_words().map(str::to_owned).collect()
        }
    }
}

/// `rouge_score.scoring.fmeasure`.
fn fmeasure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// ROUGE-1 F1 (`rouge_scorer._score_ngrams` with n = 1).
pub fn rouge1_f1(target: &[String], prediction: &[String]) -> f64 {
    let mut target_counts: HashMap<&str, usize> = HashMap::new();
    for t in target {
        *target_counts.entry(t).or_default() += 1;
    }
    let mut prediction_counts: HashMap<&str, usize> = HashMap::new();
    for t in prediction {
        *prediction_counts.entry(t).or_default() += 1;
    }
    let overlap: usize = target_counts
        .iter()
        .map(|(t, &n)| n.min(prediction_counts.get(t).copied().unwrap_or(0)))
        .sum();
    let precision = overlap as f64 / prediction.len().max(1) as f64;
    let recall = overlap as f64 / target.len().max(1) as f64;
    fmeasure(precision, recall)
}

/// ROUGE-L F1 (`rouge_scorer._score_lcs`): longest common subsequence of the token lists.
pub fn rouge_l_f1(target: &[String], prediction: &[String]) -> f64 {
    if target.is_empty() || prediction.is_empty() {
        return 0.0;
    }
    let lcs = lcs_length(target, prediction);
    let precision = lcs as f64 / prediction.len() as f64;
    let recall = lcs as f64 / target.len() as f64;
    fmeasure(precision, recall)
}

/// Length of the LCS with one rolling row of the reference's DP table.
fn lcs_length(a: &[String], b: &[String]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        rouge_tokens(s, RougeTokenizer::RougeScore)
    }

    #[test]
    fn reference_tokenizer_keeps_ascii_alnum_runs_only() {
        assert_eq!(
            toks("Hello, World! x-ray 3.14"),
            ["hello", "world", "x", "ray", "3", "14"]
        );
        assert!(toks("北京是中国的首都").is_empty());
        // KELVIN SIGN lowercases to an ASCII k, as in Python.
        assert_eq!(toks("\u{212a}ilo"), ["kilo"]);
    }

    #[test]
    fn multilingual_tokenizer_splits_non_latin_scripts() {
        let t = rouge_tokens("Привет, МИР! 北京", RougeTokenizer::Multilingual);
        assert_eq!(t, ["привет", "мир", "北", "京"]);
    }

    #[test]
    fn scores_match_hand_computation() {
        // rouge_score: score("the cat sat", "the cat the") -> rouge1 P 2/3 R 2/3, rougeL LCS 2.
        let target = toks("the cat sat");
        let prediction = toks("the cat the");
        assert!((rouge1_f1(&target, &prediction) - 2.0 / 3.0).abs() < 1e-15);
        assert!((rouge_l_f1(&target, &prediction) - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(rouge1_f1(&[], &prediction), 0.0);
        assert_eq!(rouge_l_f1(&target, &[]), 0.0);
        let a = toks("a b c d e f g");
        let b = toks("g f e d c b a");
        assert!((rouge_l_f1(&a, &b) - 1.0 / 7.0).abs() < 1e-15);
    }
}
