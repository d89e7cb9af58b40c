//! Matrix fan-out: every combination of a stage's matrix values is its own stage instance.

use std::collections::BTreeMap;

use serde_json::Value;

use super::spec::MatrixAxis;

/// One combination of matrix values, keyed by matrix key.
pub type Combo = BTreeMap<String, Value>;

/// All combinations of the statically listed axes (`all` axes are expanded later).
pub fn static_combinations(matrix: &BTreeMap<String, MatrixAxis>) -> Vec<Combo> {
    let mut combos = vec![Combo::new()];
    for (key, axis) in matrix {
        if let MatrixAxis::Values(values) = axis {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.insert(key.clone(), v.clone());
                        c
                    })
                })
                .collect();
        }
    }
    combos
}

/// Extends each combination with the values of one expanded axis.
pub fn extend(combos: Vec<Combo>, key: &str, values: &[Value]) -> Vec<Combo> {
    combos
        .into_iter()
        .flat_map(|c| {
            values.iter().map(move |v| {
                let mut c = c.clone();
                c.insert(key.to_string(), v.clone());
                c
            })
        })
        .collect()
}

/// Stage params with the combination's values merged in. `seed` is not a parameter: it selects
/// the instance's run seed.
pub fn merged_params(params: &serde_json::Map<String, Value>, combo: &Combo) -> Value {
    let mut merged = params.clone();
    for (k, v) in combo {
        if k != "seed" {
            merged.insert(k.clone(), v.clone());
        }
    }
    Value::Object(merged)
}

/// `budget=2,method=lora` — stable, human-readable, used in instance ids.
pub fn label(combo: &Combo) -> String {
    combo
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Two instances are linked when they agree on every matrix key they share.
pub fn compatible(a: &Combo, b: &Combo) -> bool {
    a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cartesian_product_in_key_order() {
        let mut m = BTreeMap::new();
        m.insert("seed".into(), MatrixAxis::Values(vec![json!(0), json!(1)]));
        m.insert(
            "budget".into(),
            MatrixAxis::Values(vec![json!(2), json!(4), json!(8)]),
        );
        m.insert("client".into(), MatrixAxis::All);
        let c = static_combinations(&m);
        assert_eq!(c.len(), 6);
        assert_eq!(label(&c[0]), "budget=2,seed=0");
        let e = extend(c, "client", &[json!(0), json!(1)]);
        assert_eq!(e.len(), 12);
    }

    #[test]
    fn compatibility_on_shared_keys() {
        let a: Combo = [("seed".to_string(), json!(0))].into();
        let b: Combo = [
            ("seed".to_string(), json!(0)),
            ("budget".to_string(), json!(2)),
        ]
        .into();
        let c: Combo = [("seed".to_string(), json!(1))].into();
        assert!(compatible(&a, &b));
        assert!(!compatible(&c, &b));
        assert!(compatible(&Combo::new(), &b));
    }
}
