//! LoRA adapter creation (PEFT initialisation from our seeded RNG), target-module selection
//! and merging adapters into the base weights of a parameter store.

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use super::Result;
use super::{a_name, b_name, e_name, lambda_name, AdaptedLinear, AdapterSpec, LinearShape};
use crate::params::ParamStore;
use crate::rng::{derive_seed, rng_from};

/// Which base linears get an adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetModules {
    /// Every linear of the model, classifier included (PEFT `all-linear` without a task type,
    /// PAPER_NOTES §3: 74 modules for mBERT).
    AllLinear,
    /// Modules whose last name component is in the list (e.g. `["query", "value"]`).
    Names(Vec<String>),
}

impl TargetModules {
    pub fn select(&self, all: &[LinearShape]) -> Vec<LinearShape> {
        match self {
            TargetModules::AllLinear => all.to_vec(),
            TargetModules::Names(names) => all
                .iter()
                .filter(|m| {
                    let last = m.name.rsplit('.').next().unwrap_or(&m.name);
                    names.iter().any(|n| n == last)
                })
                .cloned()
                .collect(),
        }
    }
}

/// The seed of module `module`'s initial A: derived from the run seed and the module name, so a
/// module's A does not depend on which other modules are adapted, and can be re-created exactly
/// when BayesTune restores the initial A after rank selection (PAPER_NOTES §4 step 3).
pub fn a_seed(seed: u64, module: &str) -> u64 {
    derive_seed(seed, &["lora_A".into(), module.into()])
}

/// PEFT's LoRA A init `kaiming_uniform_(a=√5)`: U(−b, b) with b = √3 · gain / √fan_in and
/// gain = √(2 / (1 + a²)) (= 1/√fan_in), drawn from our seeded stream.
pub fn kaiming_uniform_a(
    seed: u64,
    rank: usize,
    in_dim: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let gain = (2.0f64 / (1.0 + 5.0)).sqrt();
    let bound = (3.0f64).sqrt() * gain / (in_dim as f64).sqrt();
    let mut rng = rng_from(seed);
    let v: Vec<f32> = (0..rank * in_dim)
        .map(|_| (-bound + 2.0 * bound * rng.random::<f64>()) as f32)
        .collect();
    Ok(Tensor::from_vec(v, (rank, in_dim), device)?.to_dtype(dtype)?)
}

/// Adds trainable LoRA tensors (A Kaiming-uniform from `a_seed(seed, name)`, B = 0) to `store`
/// for each module; `rank_of(name) = 0` adds nothing for that module.
pub fn add_lora(
    store: &mut ParamStore,
    modules: &[LinearShape],
    rank_of: impl Fn(&str) -> usize,
    seed: u64,
    dtype: DType,
) -> Result<()> {
    let device = store.device().clone();
    for m in modules {
        let r = rank_of(&m.name);
        if r == 0 {
            continue;
        }
        let a = kaiming_uniform_a(a_seed(seed, &m.name), r, m.in_dim, &device, dtype)?;
        let b = Tensor::zeros((m.out_dim, r), dtype, &device)?;
        store.insert(&a_name(&m.name), a, true)?;
        store.insert(&b_name(&m.name), b, true)?;
    }
    Ok(())
}

/// Removes every adapter tensor of `module` from the store.
pub fn remove_adapter(store: &mut ParamStore, module: &str) {
    for n in [
        a_name(module),
        b_name(module),
        lambda_name(module),
        e_name(module),
    ] {
        store.remove(&n);
    }
}

/// Folds each module's adapter into its base weight in the store (W ← W + ΔW, frozen) and
/// removes the adapter tensors, as PEFT's `merge_and_unload`. Returns how many were merged.
pub fn merge_into_store(
    store: &mut ParamStore,
    modules: &[LinearShape],
    spec: &AdapterSpec,
) -> Result<usize> {
    let mut merged = Vec::new();
    for m in modules {
        let bias = store.contains(&format!("{}.bias", m.name));
        let layer = AdaptedLinear::load(store, m, bias, spec)?;
        if let Some(d) = layer.delta_weight()? {
            let w = (layer.weight() + d.to_dtype(layer.weight().dtype())?)?;
            merged.push((m.name.clone(), w));
        }
    }
    let n = merged.len();
    for (name, w) in merged {
        let wname = format!("{name}.weight");
        let trainable = store.param(&wname).is_some_and(|p| p.is_trainable());
        store.insert(&wname, w, trainable)?;
        remove_adapter(store, &name);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{normal_tensor, DropoutRng};
    use crate::peft::layer::ForwardCtx;
    use crate::peft::AdapterKind;

    fn shape(name: &str, i: usize, o: usize) -> LinearShape {
        LinearShape {
            name: name.into(),
            in_dim: i,
            out_dim: o,
        }
    }

    #[test]
    fn kaiming_bound_and_determinism() {
        let a = kaiming_uniform_a(3, 8, 100, &Device::Cpu, DType::F32).unwrap();
        let b = kaiming_uniform_a(3, 8, 100, &Device::Cpu, DType::F32).unwrap();
        let av: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(av, b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(av.iter().all(|v| v.abs() <= 0.1 + 1e-7));
        let max = av.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.09, "samples should fill U(-0.1, 0.1), max {max}");
    }

    #[test]
    fn targets_and_rank_zero_means_no_adapter() {
        let all = vec![
            shape("l.0.attention.self.query", 4, 4),
            shape("l.0.attention.self.key", 4, 4),
            shape("l.0.attention.self.value", 4, 4),
        ];
        let qv = TargetModules::Names(vec!["query".into(), "value".into()]).select(&all);
        assert_eq!(qv.len(), 2);
        let mut store = ParamStore::new(&Device::Cpu);
        for m in &all {
            store
                .insert(
                    &format!("{}.weight", m.name),
                    Tensor::ones((4, 4), DType::F32, &Device::Cpu).unwrap(),
                    false,
                )
                .unwrap();
        }
        add_lora(
            &mut store,
            &all,
            |n| usize::from(!n.ends_with("key")) * 2,
            1,
            DType::F32,
        )
        .unwrap();
        assert!(!store.contains(&a_name(&all[1].name)));
        let spec = AdapterSpec {
            kind: AdapterKind::Lora { alpha: 4.0 },
            dropout: 0.0,
        };
        let l = AdaptedLinear::load(&store, &all[1], false, &spec).unwrap();
        assert!(!l.has_adapter());
        let l = AdaptedLinear::load(&store, &all[0], false, &spec).unwrap();
        assert_eq!(l.rank(), 2);
    }

    #[test]
    fn merge_then_unmerge_restores_forward() {
        let m = shape("lin", 5, 3);
        let mut store = ParamStore::new(&Device::Cpu);
        let w = normal_tensor(1, (3, 5), 1.0, &Device::Cpu, DType::F32).unwrap();
        store.insert("lin.weight", w, false).unwrap();
        store
            .insert(
                "lin.bias",
                Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
                false,
            )
            .unwrap();
        add_lora(&mut store, std::slice::from_ref(&m), |_| 2, 9, DType::F32).unwrap();
        let b = normal_tensor(2, (3, 2), 1.0, &Device::Cpu, DType::F32).unwrap();
        store.insert(&b_name("lin"), b, true).unwrap();
        let spec = AdapterSpec {
            kind: AdapterKind::Lora { alpha: 8.0 },
            dropout: 0.0,
        };
        let mut l = AdaptedLinear::load(&store, &m, true, &spec).unwrap();
        let x = normal_tensor(3, (4, 5), 1.0, &Device::Cpu, DType::F32).unwrap();
        let rng = DropoutRng::new(0);
        let y0 = l.forward(&x, &ForwardCtx::train(&rng)).unwrap();
        l.merge().unwrap();
        let y1 = l.forward(&x, &ForwardCtx::eval()).unwrap();
        l.unmerge().unwrap();
        let y2 = l.forward(&x, &ForwardCtx::eval()).unwrap();
        let d1 = (&y0 - &y1)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d2 = (&y0 - &y2)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d1 < 1e-5 && d2 < 1e-5, "{d1} {d2}");
        assert_eq!(merge_into_store(&mut store, &[m], &spec).unwrap(), 1);
        assert!(!store.contains(&a_name("lin")));
    }
}
