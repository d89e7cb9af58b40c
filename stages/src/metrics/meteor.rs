//! METEOR exactly as nltk 3.10.4's `meteor_score.single_meteor_score(reference, hypothesis)`
//! computes it (PAPER_NOTES §7): lowercase tokens; align by exact match, then Porter stem
//! (NLTK extensions), then WordNet synonyms; count chunks; α 0.9, β 3, γ 0.5.
//!
//! NLTK quirks kept on purpose: each stage pairs words from the right end (the last
//! hypothesis word takes the last free reference occurrence); the synonym stage sees the
//! *stemmed* leftovers of the stem stage (so "happi" is looked up in WordNet, not "happy");
//! synonyms are compared with lemma names as WordNet spells them (capitalised names never
//! match lowercased words).

use std::collections::HashMap;

use nltk_porter::{Mode, PorterStemmer};

use super::pytext::py_lower;
use super::wordnet::Wordnet;
use super::MetricsError;

/// METEOR's weights; [`Default`] is NLTK's (and the paper's) α 0.9, β 3, γ 0.5.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeteorParams {
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
}

impl Default for MeteorParams {
    fn default() -> Self {
        MeteorParams {
            alpha: 0.9,
            beta: 3.0,
            gamma: 0.5,
        }
    }
}

/// A METEOR scorer: WordNet (borrowed, loaded once) plus NLTK's Porter stemmer.
pub struct Meteor<'w> {
    wordnet: &'w Wordnet,
    stemmer: PorterStemmer,
    params: MeteorParams,
}

/// (original position, word) — NLTK's "enum" lists.
type Enumerated = Vec<(usize, String)>;

/// `_match_enums`: walks the hypothesis from the end; each word takes the last unused
/// reference position holding the same string. Returns (hyp, ref) original-position pairs
/// and the unmatched words of each side.
fn match_enums(
    hyp: Enumerated,
    reference: Enumerated,
) -> (Vec<(usize, usize)>, Enumerated, Enumerated) {
    let mut positions: HashMap<&str, Vec<usize>> = HashMap::new();
    for (j, (_, word)) in reference.iter().enumerate() {
        positions.entry(word).or_default().push(j);
    }
    let mut matches = Vec::new();
    let mut hyp_matched = vec![false; hyp.len()];
    let mut ref_matched = vec![false; reference.len()];
    for i in (0..hyp.len()).rev() {
        if let Some(j) = positions.get_mut(hyp[i].1.as_str()).and_then(Vec::pop) {
            hyp_matched[i] = true;
            ref_matched[j] = true;
            matches.push((hyp[i].0, reference[j].0));
        }
    }
    let keep = |list: Enumerated, matched: &[bool]| {
        list.into_iter()
            .zip(matched)
            .filter(|(_, &m)| !m)
            .map(|(pair, _)| pair)
            .collect::<Enumerated>()
    };
    let hyp_left = keep(hyp, &hyp_matched);
    let ref_left = keep(reference, &ref_matched);
    (matches, hyp_left, ref_left)
}

/// `_count_chunks`: runs of matches adjacent in both hypothesis and reference.
fn count_chunks(matches: &[(usize, usize)]) -> usize {
    1 + matches
        .windows(2)
        .filter(|w| !(w[1].0 == w[0].0 + 1 && w[1].1 == w[0].1 + 1))
        .count()
}

impl<'w> Meteor<'w> {
    pub fn new(wordnet: &'w Wordnet, params: MeteorParams) -> Self {
        Meteor {
            wordnet,
            stemmer: PorterStemmer::new(Mode::Nltk),
            params,
        }
    }

    /// `_enum_wordnetsyn_match`: from the end of the hypothesis, a word (or any of its
    /// WordNet synonyms) takes the free reference position with the highest index among all
    /// the candidate strings' last positions.
    fn synonym_match(
        &self,
        hyp: Enumerated,
        reference: Enumerated,
    ) -> Result<Vec<(usize, usize)>, MetricsError> {
        // Nothing left to pair: NLTK would still look every word up, with no effect.
        if reference.is_empty() {
            return Ok(Vec::new());
        }
        let mut positions: HashMap<&str, Vec<usize>> = HashMap::new();
        for (j, (_, word)) in reference.iter().enumerate() {
            positions.entry(word).or_default().push(j);
        }
        let mut matches = Vec::new();
        for i in (0..hyp.len()).rev() {
            let word = hyp[i].1.as_str();
            let mut candidates = self.wordnet.synonyms(word)?;
            candidates.insert(word);
            // Distinct strings never share a position, so the best is unique whatever the
            // (hash-randomised, in Python) set iteration order.
            let best = candidates
                .iter()
                .filter_map(|&s| {
                    positions
                        .get_key_value(s)
                        .and_then(|(&k, v)| v.last().map(|&j| (j, k)))
                })
                .max();
            if let Some((j, key)) = best {
                if let Some(list) = positions.get_mut(key) {
                    list.pop();
                }
                matches.push((hyp[i].0, reference[j].0));
            }
        }
        Ok(matches)
    }

    /// `single_meteor_score(reference, hypothesis)` on pre-tokenised input.
    pub fn score_tokens(
        &self,
        reference: &[String],
        hypothesis: &[String],
    ) -> Result<f64, MetricsError> {
        let hyp: Enumerated = hypothesis.iter().map(|w| py_lower(w)).enumerate().collect();
        let reference: Enumerated = reference.iter().map(|w| py_lower(w)).enumerate().collect();
        let translation_length = hyp.len();
        let reference_length = reference.len();

        let (mut matches, hyp, reference) = match_enums(hyp, reference);
        let stem = |list: Enumerated| -> Enumerated {
            list.into_iter()
                .map(|(i, w)| (i, self.stemmer.stem(&w)))
                .collect()
        };
        let (stem_matches, hyp, reference) = match_enums(stem(hyp), stem(reference));
        matches.extend(stem_matches);
        matches.extend(self.synonym_match(hyp, reference)?);
        matches.sort_by_key(|&(h, _)| h);

        // Python raises ZeroDivisionError (→ 0.0) for empty inputs or no matches.
        let m = matches.len();
        if translation_length == 0 || reference_length == 0 || m == 0 {
            return Ok(0.0);
        }
        let MeteorParams { alpha, beta, gamma } = self.params;
        let precision = m as f64 / translation_length as f64;
        let recall = m as f64 / reference_length as f64;
        let fmean = (precision * recall) / (alpha * precision + (1.0 - alpha) * recall);
        let frag_frac = count_chunks(&matches) as f64 / m as f64;
        let penalty = gamma * frag_frac.powf(beta);
        Ok((1.0 - penalty) * fmean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_count_breaks_in_either_side() {
        assert_eq!(count_chunks(&[(0, 0), (1, 1), (2, 2)]), 1);
        assert_eq!(count_chunks(&[(0, 0), (1, 2), (2, 3)]), 2);
        assert_eq!(count_chunks(&[(0, 3), (1, 2), (2, 1)]), 3);
    }

    #[test]
    fn exact_stage_pairs_from_the_right() {
        let e = |ws: &[&str]| {
            ws.iter()
                .map(|w| w.to_string())
                .enumerate()
                .collect::<Enumerated>()
        };
        let (m, h, r) = match_enums(e(&["a", "b", "a"]), e(&["a", "a", "c"]));
        assert_eq!(m, [(2, 1), (0, 0)]);
        assert_eq!(h, [(1, "b".to_string())]);
        assert_eq!(r, [(2, "c".to_string())]);
    }
}
