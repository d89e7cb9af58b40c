//! The XNLI record every reader produces, and the label order.

/// Label names in HF `xnli`'s ClassLabel order (0, 1, 2); `label_id` indexes this list.
pub const XNLI_LABELS: [&str; 3] = ["entailment", "neutral", "contradiction"];

/// One premise/hypothesis pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NliRecord {
    pub premise: String,
    pub hypothesis: String,
    pub label_id: u32,
}
