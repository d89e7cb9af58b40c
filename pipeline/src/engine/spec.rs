//! The parsed manifest's plain data: stages, their matrix axes and the requested device. The
//! matrix, DAG and registry read these without depending on the parser and validator.

use std::collections::BTreeMap;

use serde_json::Value;

/// Environment variable that overrides the manifest's `data_root`.
pub const DATA_ROOT_ENV: &str = "FEDP2EFT_DATA";

/// Where a stage's matrix key takes its values from.
#[derive(Debug, Clone, PartialEq)]
pub enum MatrixAxis {
    /// Values listed in the manifest.
    Values(Vec<Value>),
    /// `all`: the stage kind enumerates the values from its inputs once they exist.
    All,
}

#[derive(Debug, Clone)]
pub struct StageSpec {
    pub name: String,
    pub kind: String,
    pub needs: Vec<String>,
    /// Always a JSON object.
    pub params: serde_json::Map<String, Value>,
    pub matrix: BTreeMap<String, MatrixAxis>,
    /// The manifest's `resources:` for this stage (cluster backends; never part of a key).
    pub resources: super::resources::Resources,
}

/// Compute device requested by the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    Auto,
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cpu" => Some(DeviceSpec::Cpu),
            "auto" => Some(DeviceSpec::Auto),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda),
        }
    }

    /// The device stages will actually use. This build has no CUDA support compiled in, so
    /// `auto` means the CPU; `cuda:N` is refused at validation time.
    pub fn resolved(&self) -> String {
        match self {
            DeviceSpec::Cpu | DeviceSpec::Auto => "cpu".to_string(),
            DeviceSpec::Cuda(n) => format!("cuda:{n}"),
        }
    }
}
