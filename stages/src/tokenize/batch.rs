//! Padded batches of token ids with attention masks, type ids and completion-only labels.

use super::TokenizeError;
use candle_core::{Device, Tensor};

/// Label value ignored by the loss (PyTorch/HF `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Where padding goes: right for training, left for batched generation (PAPER_NOTES §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    Left,
    Right,
}

/// Rectangular batch: every row has the length of the longest encoded row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
    pub type_ids: Vec<Vec<u32>>,
}

impl EncodedBatch {
    /// Pads `(ids, type_ids)` rows to the longest with `pad_id` (type id 0, mask 0), as HF
    /// `padding="longest"` does.
    pub fn pad(
        rows: Vec<(Vec<u32>, Vec<u32>)>,
        pad_id: u32,
        side: PaddingSide,
    ) -> Result<Self, TokenizeError> {
        if rows.is_empty() {
            return Err(TokenizeError::EmptyBatch);
        }
        let width = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let mut batch = Self {
            input_ids: Vec::new(),
            attention_mask: Vec::new(),
            type_ids: Vec::new(),
        };
        for (ids, types) in rows {
            let n_pad = width - ids.len();
            let (mut i, mut m, mut t) = (
                Vec::with_capacity(width),
                Vec::with_capacity(width),
                Vec::with_capacity(width),
            );
            if side == PaddingSide::Left {
                i.extend(std::iter::repeat_n(pad_id, n_pad));
                m.extend(std::iter::repeat_n(0, n_pad));
                t.extend(std::iter::repeat_n(0, n_pad));
            }
            m.extend(std::iter::repeat_n(1, ids.len()));
            i.extend(ids);
            t.extend(types);
            if side == PaddingSide::Right {
                i.extend(std::iter::repeat_n(pad_id, n_pad));
                m.extend(std::iter::repeat_n(0, n_pad));
                t.extend(std::iter::repeat_n(0, n_pad));
            }
            batch.input_ids.push(i);
            batch.attention_mask.push(m);
            batch.type_ids.push(t);
        }
        Ok(batch)
    }

    /// Right-pads every row to `width` (HF `padding="max_length"`); rows are never cut.
    pub fn pad_right_to(&mut self, width: usize, pad_id: u32) {
        for ((i, m), t) in self
            .input_ids
            .iter_mut()
            .zip(&mut self.attention_mask)
            .zip(&mut self.type_ids)
        {
            let n = width.saturating_sub(i.len());
            i.extend(std::iter::repeat_n(pad_id, n));
            m.extend(std::iter::repeat_n(0, n));
            t.extend(std::iter::repeat_n(0, n));
        }
    }

    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    pub fn width(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }

    /// `(input_ids, attention_mask, token_type_ids)` as `u32` tensors of shape `(batch, width)`.
    pub fn to_tensors(&self, device: &Device) -> Result<(Tensor, Tensor, Tensor), TokenizeError> {
        let shape = (self.len(), self.width());
        let flat = |rows: &[Vec<u32>]| rows.concat();
        Ok((
            Tensor::from_vec(flat(&self.input_ids), shape, device)?,
            Tensor::from_vec(flat(&self.attention_mask), shape, device)?,
            Tensor::from_vec(flat(&self.type_ids), shape, device)?,
        ))
    }

    /// Completion-only labels for every row (see [`completion_only_labels`]), `IGNORE_INDEX` on
    /// padding, as an `i64` tensor `(batch, width)`.
    pub fn completion_labels(
        &self,
        response_marker: &[u32],
        device: &Device,
    ) -> Result<Tensor, TokenizeError> {
        let mut flat = Vec::with_capacity(self.len() * self.width());
        for (ids, mask) in self.input_ids.iter().zip(&self.attention_mask) {
            let labels = completion_only_labels(ids, mask, response_marker);
            flat.extend(labels);
        }
        Ok(Tensor::from_vec(flat, (self.len(), self.width()), device)?)
    }
}

/// Labels for loss on the response only, as TRL's `DataCollatorForCompletionOnlyLM` (used by
/// FedLLM-Bench/the authors, PAPER_NOTES §2): everything up to and including the first
/// occurrence of the response-marker ids is `IGNORE_INDEX`, as is padding. A row without the
/// marker is ignored entirely (TRL warns and does the same).
pub fn completion_only_labels(ids: &[u32], mask: &[u32], response_marker: &[u32]) -> Vec<i64> {
    let found = if response_marker.is_empty() || response_marker.len() > ids.len() {
        None
    } else {
        ids.windows(response_marker.len())
            .position(|w| w == response_marker)
    };
    ids.iter()
        .zip(mask)
        .enumerate()
        .map(|(i, (&id, &m))| match found {
            Some(start) if i >= start + response_marker.len() && m == 1 => i64::from(id),
            _ => IGNORE_INDEX,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_left_and_right() {
        let rows = vec![(vec![5, 6, 7], vec![0, 0, 1]), (vec![8], vec![0])];
        let right = EncodedBatch::pad(rows.clone(), 0, PaddingSide::Right).unwrap();
        assert_eq!(right.input_ids, vec![vec![5, 6, 7], vec![8, 0, 0]]);
        assert_eq!(right.attention_mask, vec![vec![1, 1, 1], vec![1, 0, 0]]);
        assert_eq!(right.type_ids, vec![vec![0, 0, 1], vec![0, 0, 0]]);
        let left = EncodedBatch::pad(rows, 9, PaddingSide::Left).unwrap();
        assert_eq!(left.input_ids, vec![vec![5, 6, 7], vec![9, 9, 8]]);
        assert_eq!(left.attention_mask, vec![vec![1, 1, 1], vec![0, 0, 1]]);
    }

    #[test]
    fn completion_labels_mask_prompt_marker_and_padding() {
        let ids = [1, 2, 3, 4, 5, 6, 0];
        let mask = [1, 1, 1, 1, 1, 1, 0];
        assert_eq!(
            completion_only_labels(&ids, &mask, &[3, 4]),
            vec![-100, -100, -100, -100, 5, 6, -100]
        );
        assert_eq!(completion_only_labels(&ids, &mask, &[9]), vec![-100; 7]);
    }
}
