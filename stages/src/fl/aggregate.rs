//! FedAvg (McMahan et al. 2017) weighted by client sample counts, accumulated one client at a
//! time so memory stays flat however many clients a round has.
//!
//! Flower's `aggregate` computes Σ_k (w_k · n_k) / Σ_k n_k in the parameters' dtype; we do the
//! same, in client order.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum FlError {
    #[error("round {round}: client {client} sent a non-finite value in `{tensor}`")]
    NonFinite {
        round: u64,
        client: u32,
        tensor: String,
    },
    #[error("round {round}: client {client} sent {got} tensors; expected the {expected} of the first client (first difference: `{name}`)")]
    Mismatch {
        round: u64,
        client: u32,
        got: usize,
        expected: usize,
        name: String,
    },
    #[error("round {round}: client {client} has no training examples")]
    EmptyClient { round: u64, client: u32 },
    #[error("round {0}: no client update to aggregate")]
    NothingToAggregate(u64),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Running weighted sum of named tensors.
pub struct FedAvg {
    round: u64,
    sums: BTreeMap<String, Tensor>,
    total: u64,
}

impl FedAvg {
    pub fn new(round: u64) -> Self {
        FedAvg {
            round,
            sums: BTreeMap::new(),
            total: 0,
        }
    }

    /// Adds one client's parameters with weight `n_examples`. Rejects NaN/inf explicitly: a
    /// diverged client must fail the stage, never be averaged in.
    pub fn add(
        &mut self,
        client: u32,
        params: &BTreeMap<String, Tensor>,
        n_examples: u64,
    ) -> Result<(), FlError> {
        let round = self.round;
        if n_examples == 0 {
            return Err(FlError::EmptyClient { round, client });
        }
        for (name, t) in params {
            if !all_finite(t)? {
                return Err(FlError::NonFinite {
                    round,
                    client,
                    tensor: name.clone(),
                });
            }
        }
        if !self.sums.is_empty() {
            let differs = params
                .keys()
                .zip(self.sums.keys())
                .find(|(a, b)| a != b)
                .map(|(a, _)| a.clone());
            if params.len() != self.sums.len() || differs.is_some() {
                return Err(FlError::Mismatch {
                    round,
                    client,
                    got: params.len(),
                    expected: self.sums.len(),
                    name: differs.unwrap_or_default(),
                });
            }
        }
        let n = n_examples as f64;
        for (name, t) in params {
            let weighted = t.affine(n, 0.0)?;
            let sum = match self.sums.remove(name) {
                Some(s) => (s + weighted)?,
                None => weighted,
            };
            self.sums.insert(name.clone(), sum);
        }
        self.total += n_examples;
        Ok(())
    }

    pub fn clients_weight(&self) -> u64 {
        self.total
    }

    /// The weighted mean of everything added.
    pub fn finish(self) -> Result<BTreeMap<String, Tensor>, FlError> {
        if self.total == 0 {
            return Err(FlError::NothingToAggregate(self.round));
        }
        let inv = 1.0 / self.total as f64;
        self.sums
            .into_iter()
            .map(|(k, s)| Ok((k, s.affine(inv, 0.0)?)))
            .collect()
    }
}

fn all_finite(t: &Tensor) -> candle_core::Result<bool> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().all(|x| x.is_finite()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn named(v: &[f32]) -> BTreeMap<String, Tensor> {
        [("w".to_string(), Tensor::new(v, &Device::Cpu).unwrap())].into()
    }

    #[test]
    fn weighted_mean_matches_hand_computation() {
        let mut agg = FedAvg::new(0);
        agg.add(0, &named(&[1.0, 2.0]), 1).unwrap();
        agg.add(1, &named(&[3.0, -2.0]), 3).unwrap();
        let out = agg.finish().unwrap();
        // (1·1 + 3·3)/4 = 2.5, (2·1 − 2·3)/4 = −1
        assert_eq!(out["w"].to_vec1::<f32>().unwrap(), vec![2.5, -1.0]);
    }

    #[test]
    fn nan_and_mismatch_and_empty_are_errors_naming_the_client() {
        let mut agg = FedAvg::new(4);
        let e = agg.add(9, &named(&[f32::NAN]), 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "round 4: client 9 sent a non-finite value in `w`"
        );
        agg.add(1, &named(&[1.0]), 2).unwrap();
        let other: BTreeMap<String, Tensor> =
            [("v".to_string(), Tensor::new(&[1f32], &Device::Cpu).unwrap())].into();
        assert!(matches!(
            agg.add(2, &other, 1),
            Err(FlError::Mismatch { client: 2, .. })
        ));
        assert!(matches!(
            agg.add(3, &named(&[1.0]), 0),
            Err(FlError::EmptyClient { client: 3, .. })
        ));
        assert!(matches!(
            FedAvg::new(5).finish(),
            Err(FlError::NothingToAggregate(5))
        ));
    }
}
