//! A stage kind's parameters: typed deserialisation that names the offending field, and the
//! problem a kind reports before anything runs.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// A parameter problem found before anything runs; `field` lets the manifest error name a line.
#[derive(Debug, Clone)]
pub struct ParamError {
    pub field: Option<String>,
    pub message: String,
}

impl ParamError {
    pub fn new(field: Option<&str>, message: impl Into<String>) -> Self {
        ParamError {
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

/// Checks that every named value is positive and finite, naming the first that is not.
pub fn require_positive(values: &[(&str, f64)]) -> Result<(), ParamError> {
    match values.iter().find(|(_, v)| !(*v > 0.0 && v.is_finite())) {
        Some((name, _)) => Err(ParamError::new(
            Some(name),
            format!("`{name}` must be positive"),
        )),
        None => Ok(()),
    }
}

/// Deserializes a kind's typed parameters, naming the offending field on error.
pub fn typed_params<T: DeserializeOwned>(params: &Value) -> Result<T, ParamError> {
    serde_json::from_value(params.clone()).map_err(|e| {
        let message = e.to_string();
        if let Some(field) = message
            .split('`')
            .nth(1)
            .filter(|_| message.contains("field `"))
        {
            return ParamError::new(Some(field), message.clone());
        }
        match culprit::<T>(params, &message) {
            Some(field) => ParamError::new(Some(&field), format!("field `{field}`: {message}")),
            None => ParamError::new(None, message),
        }
    })
}

/// The top-level field behind an error that serde_json does not locate ("invalid type: string
/// \"x\", expected u64"): the one whose removal changes the error. Deserialisation stops at the
/// first bad value, so removing any other field leaves the message as it was.
fn culprit<T: DeserializeOwned>(params: &Value, message: &str) -> Option<String> {
    let map = params.as_object()?;
    map.keys()
        .find(|key| {
            let mut without = map.clone();
            without.remove(*key);
            match serde_json::from_value::<T>(Value::Object(without)) {
                Ok(_) => true,
                Err(e) => e.to_string() != message,
            }
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct P {
        rounds: u64,
        lr: f64,
        #[serde(default)]
        name: String,
    }

    #[test]
    fn type_errors_name_their_field() {
        let e = typed_params::<P>(&serde_json::json!({"rounds": 2, "lr": "fast"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("lr"), "{}", e.message);
        assert!(
            e.message.starts_with("field `lr`: invalid type"),
            "{}",
            e.message
        );
        let e = typed_params::<P>(&serde_json::json!({"lr": 1.0, "rounds": -1, "name": "n"}))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("rounds"), "{}", e.message);
        let e = typed_params::<P>(&serde_json::json!({"lr": 1.0})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("rounds"), "{}", e.message);
    }
}
