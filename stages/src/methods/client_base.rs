//! A client's base model as every method starts from it: the federated base (`model/`) plus the
//! client's private parameters when the base method keeps some (DEPT's embeddings, FedDPA-T's
//! local q/v adapter).

use std::path::Path;

use candle_core::Device;

use super::{PersonalizeError, Result};
use crate::fl::feddpa_client::DpaConfig;
use crate::peft::lora::merge_into_store;
use crate::peft::{a_name, is_adapter_param};
use crate::task::{build_task_model, ModelSource, TaskModel, TaskSetup};

/// Loads the base model from an HF `model_dir` for `setup`, then applies `client_state` when
/// given: plain tensors (DEPT's `*_embeddings*`) replace the base's, and adapter tensors
/// (FedDPA-T's local q/v LoRA, r 8 α 8) are merged into their base weights.
pub fn load_base(
    model_dir: &Path,
    client_state: Option<&Path>,
    setup: &TaskSetup,
    device: &Device,
) -> Result<TaskModel> {
    let mut model = build_task_model(
        &ModelSource::Dir(model_dir.to_path_buf()),
        setup,
        0,
        || Ok(Vec::new()),
        device,
    )?;
    if let Some(path) = client_state {
        let bad = |message: String| PersonalizeError::ClientState {
            path: path.display().to_string(),
            message,
        };
        let tensors =
            crate::params::read_safetensors(path, device).map_err(|e| bad(e.to_string()))?;
        let tensors =
            crate::client_state::expand(tensors, model.store()).map_err(|e| bad(e.to_string()))?;
        let (adapters, plain): (Vec<_>, Vec<_>) =
            tensors.into_iter().partition(|(n, _)| is_adapter_param(n));
        for (name, _) in &plain {
            if !model.store().contains(name) {
                return Err(bad(format!(
                    "tensor `{name}` is not a parameter of the base model"
                )));
            }
        }
        model
            .store_mut()
            .assign(&plain.into_iter().collect())
            .map_err(|e| bad(e.to_string()))?;
        if !adapters.is_empty() {
            for (name, t) in &adapters {
                model
                    .store_mut()
                    .insert(name, t.clone(), false)
                    .map_err(|e| bad(e.to_string()))?;
            }
            let modules: Vec<_> = model
                .all_linear()
                .into_iter()
                .filter(|m| model.store().contains(&a_name(&m.name)))
                .collect();
            merge_into_store(model.store_mut(), &modules, &DpaConfig::paper().spec())
                .map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testutil::{max_abs_diff, saved_tiny, setup};
    use candle_core::DType;

    #[test]
    fn client_state_replaces_embeddings_and_rejects_unknown_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let labels = saved_tiny(dir.path());
        let base = load_base(dir.path(), None, &setup(&labels), &Device::Cpu).unwrap();
        let name = "bert.embeddings.word_embeddings.weight";
        let w = base.store().get(name).unwrap();
        let state = dir.path().join("3.safetensors");
        let zeros = w.zeros_like().unwrap();
        crate::params::write_safetensors(&[(name.to_string(), zeros)].into(), &state).unwrap();
        let m = load_base(dir.path(), Some(&state), &setup(&labels), &Device::Cpu).unwrap();
        let sum: f32 = m
            .store()
            .get(name)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(sum, 0.0);
        let bad = dir.path().join("4.safetensors");
        crate::params::write_safetensors(&[("nope.weight".to_string(), w)].into(), &bad).unwrap();
        let err = load_base(dir.path(), Some(&bad), &setup(&labels), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("4.safetensors") && err.contains("nope.weight"),
            "{err}"
        );
    }

    #[test]
    fn feddpa_client_adapter_is_merged_with_alpha_over_r() {
        let dir = tempfile::tempdir().unwrap();
        let labels = saved_tiny(dir.path());
        let base = load_base(dir.path(), None, &setup(&labels), &Device::Cpu).unwrap();
        let module = "bert.encoder.layer.0.attention.self.query";
        let w = base.store().get(&format!("{module}.weight")).unwrap();
        // FedDPA-T's local adapter: r 8, α 8 → scaling 1, ΔW = B·A.
        let a = crate::nn::normal_tensor(1, (8, 16), 0.1, &Device::Cpu, DType::F32).unwrap();
        let b = crate::nn::normal_tensor(2, (16, 8), 0.1, &Device::Cpu, DType::F32).unwrap();
        let state = dir.path().join("0.safetensors");
        crate::params::write_safetensors(
            &[
                (a_name(module), a.clone()),
                (crate::peft::b_name(module), b.clone()),
            ]
            .into(),
            &state,
        )
        .unwrap();
        let m = load_base(dir.path(), Some(&state), &setup(&labels), &Device::Cpu).unwrap();
        assert!(
            !m.store().names().any(is_adapter_param),
            "adapter merged away"
        );
        let want = (w + b.matmul(&a).unwrap()).unwrap();
        let got = m.store().get(&format!("{module}.weight")).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-6, "max |ΔW − B·A| = {diff}");
    }
}
