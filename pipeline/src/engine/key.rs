//! Cache keys: blake3 over the canonical JSON of everything that determines a stage instance's
//! outputs (kind, code version, params, run seed, device, input digests, external file digests).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bump to invalidate every cached instance (a change in how the pipeline itself runs stages).
pub const PIPELINE_EPOCH: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRef {
    pub instance: String,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyComponents {
    pub kind: String,
    pub code_version: String,
    pub params: Value,
    pub seed: u64,
    pub device: String,
    /// Upstream stage name → its instances' output digests.
    pub inputs: BTreeMap<String, Vec<InputRef>>,
    /// External files (relative to the data root where possible) → blake3.
    pub external: BTreeMap<String, String>,
}

impl KeyComponents {
    pub fn key(&self) -> String {
        let v = serde_json::to_value(self).expect("key components serialize");
        let hash = blake3::hash(canonical_json(&v).as_bytes());
        hash.to_hex()[..32].to_string()
    }

    /// Human-readable reasons why `self` (current) differs from `old`.
    pub fn diff(&self, old: &KeyComponents) -> Vec<String> {
        let mut why = Vec::new();
        if self.kind != old.kind {
            why.push(format!("kind changed: {} -> {}", old.kind, self.kind));
        }
        if self.code_version != old.code_version {
            why.push(format!(
                "code version changed: {} -> {}",
                old.code_version, self.code_version
            ));
        }
        if self.seed != old.seed {
            why.push(format!("seed changed: {} -> {}", old.seed, self.seed));
        }
        if self.device != old.device {
            why.push(format!("device changed: {} -> {}", old.device, self.device));
        }
        diff_values("params", &old.params, &self.params, &mut why);
        for (stage, refs) in &self.inputs {
            match old.inputs.get(stage) {
                None => why.push(format!("new input from stage `{stage}`")),
                Some(o) if o != refs => {
                    let changed: Vec<&str> = refs
                        .iter()
                        .filter(|r| !o.contains(r))
                        .map(|r| r.instance.as_str())
                        .collect();
                    why.push(format!(
                        "input from `{stage}` changed: {}",
                        if changed.is_empty() {
                            "instances removed".to_string()
                        } else {
                            changed.join(", ")
                        }
                    ));
                }
                _ => {}
            }
        }
        for stage in old.inputs.keys() {
            if !self.inputs.contains_key(stage) {
                why.push(format!("input from stage `{stage}` removed"));
            }
        }
        for (path, d) in &self.external {
            match old.external.get(path) {
                None => why.push(format!("new data file {path}")),
                Some(o) if o != d => why.push(format!("data file changed: {path}")),
                _ => {}
            }
        }
        for path in old.external.keys() {
            if !self.external.contains_key(path) {
                why.push(format!("data file no longer read: {path}"));
            }
        }
        why
    }
}

fn diff_values(path: &str, old: &Value, new: &Value, why: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff_values(&p, x, y, why),
                    (None, Some(y)) => why.push(format!("{p} added: {y}")),
                    (Some(x), None) => why.push(format!("{p} removed (was {x})")),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => why.push(format!("{path} changed: {a} -> {b}")),
        _ => {}
    }
}

/// JSON with object keys sorted and no whitespace, independent of map implementation.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, &Value> = m.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// blake3 of a file's contents, hex.
pub fn file_digest(path: &std::path::Path) -> std::io::Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut f = std::fs::File::open(path)?;
    let n = std::io::copy(&mut f, &mut hasher)?;
    Ok((hasher.finalize().to_hex().to_string(), n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn comps(params: Value) -> KeyComponents {
        KeyComponents {
            kind: "k".into(),
            code_version: "1".into(),
            params,
            seed: 42,
            device: "cpu".into(),
            inputs: BTreeMap::new(),
            external: BTreeMap::new(),
        }
    }

    #[test]
    fn key_ignores_map_order_but_not_values() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"x":2,"y":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":{"y":3,"x":2},"a":1}"#).unwrap();
        assert_eq!(comps(a.clone()).key(), comps(b).key());
        assert_ne!(
            comps(a).key(),
            comps(json!({"a":1,"b":{"x":2,"y":4}})).key()
        );
    }

    #[test]
    fn diff_names_the_changed_param() {
        let old = comps(json!({"lr": 1e-4, "epochs": 2}));
        let new = comps(json!({"lr": 1e-3, "epochs": 2}));
        let why = new.diff(&old);
        assert_eq!(why.len(), 1);
        assert!(why[0].starts_with("params.lr changed"), "{why:?}");
    }
}
