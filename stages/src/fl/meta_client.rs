//! What the clients of the meta-networks (FedP2EFT's PSG, FedL2P's LR network) share: the
//! global weights as a trainable store, and each client's meta-data (PAPER_NOTES §5), computed
//! once — the base model never changes while a meta-network trains.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use datasets::Example;

use super::engine::{ClientUpdate, Weights};
use crate::methods::meta_features;
use crate::params::ParamStore;
use crate::task::TaskModel;

/// The round's global weights as a store of trainable tensors (copies: training them leaves
/// `global` alone).
pub fn trainable_store(global: &Weights, device: &Device) -> Result<ParamStore, String> {
    let mut store = ParamStore::new(device);
    for (k, t) in global {
        store
            .insert(k, t.clone(), true)
            .map_err(|e| e.to_string())?;
    }
    Ok(store)
}

/// The update a meta-network client sends back: every tensor of `store`, weighted by its
/// training examples.
pub fn store_update(
    store: &ParamStore,
    n_examples: usize,
    mean_loss: f32,
) -> Result<ClientUpdate, String> {
    let weights: Weights = store
        .export(|_| true)
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    Ok(ClientUpdate {
        weights,
        n_examples: n_examples as u64,
        mean_loss,
        persistent: None,
        extra: Default::default(),
    })
}

/// Per-client meta-data, on `device`, computed on first use.
pub struct FeatureCache {
    device: Device,
    features: HashMap<u32, Tensor>,
}

impl FeatureCache {
    pub fn new(device: &Device) -> Self {
        Self {
            device: device.clone(),
            features: HashMap::new(),
        }
    }

    /// `client`'s meta-data of `model` on `train` (those of its first call).
    pub fn get(
        &mut self,
        client: u32,
        model: &TaskModel,
        train: &[Example],
    ) -> Result<Tensor, String> {
        if let Some(f) = self.features.get(&client) {
            return Ok(f.clone());
        }
        let f = meta_features(model, train)
            .map_err(|e| e.to_string())?
            .to_device(&self.device)
            .map_err(|e| e.to_string())?;
        self.features.insert(client, f.clone());
        Ok(f)
    }
}
