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
        let field = message
            .split('`')
            .nth(1)
            .filter(|_| message.contains("field `"))
            .map(str::to_string);
        ParamError { field, message }
    })
}
