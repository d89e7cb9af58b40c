//! The YAML manifest: parsing (unknown fields rejected), validation against the registry of stage
//! kinds, and error messages that name the file, line and field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::error::{PipelineError, Result};
use super::registry::Registry;
use super::resources::Resources;
use super::spec::{DeviceSpec, MatrixAxis, StageSpec, DATA_ROOT_ENV};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    seed: u64,
    #[serde(default)]
    workdir: Option<PathBuf>,
    #[serde(default)]
    data_root: Option<PathBuf>,
    /// An offline mirror of the fetched inputs, tried before the network (`FEDP2EFT_MIRROR`
    /// overrides it).
    #[serde(default)]
    mirror: Option<PathBuf>,
    #[serde(default)]
    device: Option<String>,
    stages: BTreeMap<String, RawStage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    kind: String,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    matrix: BTreeMap<String, Value>,
    #[serde(default)]
    resources: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub name: String,
    pub seed: u64,
    pub workdir: PathBuf,
    pub data_root: Option<PathBuf>,
    /// The manifest's `mirror:` (the fetcher's `FEDP2EFT_MIRROR` takes precedence).
    pub mirror: Option<PathBuf>,
    pub device: DeviceSpec,
    /// Sorted by name; the DAG gives the execution order.
    pub stages: BTreeMap<String, StageSpec>,
    source: SourceLines,
}

impl Manifest {
    /// Reads and validates a manifest. `workdir_override` is the CLI's `--workdir`.
    pub fn load(path: &Path, registry: &Registry, workdir_override: Option<&Path>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineError::Manifest {
            file: path.to_path_buf(),
            line: None,
            message: format!("cannot read manifest: {e}"),
        })?;
        Self::parse(path, &text, registry, workdir_override)
    }

    pub fn parse(
        path: &Path,
        text: &str,
        registry: &Registry,
        workdir_override: Option<&Path>,
    ) -> Result<Self> {
        let source = SourceLines::new(text);
        let err = |line: Option<usize>, message: String| PipelineError::Manifest {
            file: path.to_path_buf(),
            line,
            message,
        };
        if text.trim().is_empty() {
            return Err(err(None, "manifest is empty".into()));
        }
        // Maps keep the last of repeated keys; refuse them before the values are read.
        if let Some(dup) = super::yaml_keys::find_duplicate(text) {
            let first = dup
                .line
                .and_then(|l| source.earlier_key(l, &dup.key))
                .map(|f| format!(" (first at line {f})"))
                .unwrap_or_default();
            return Err(err(
                dup.line,
                format!("key `{}` appears twice in one mapping{first}", dup.key),
            ));
        }
        let raw: RawManifest = serde_norway::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line());
            err(line, e.to_string())
        })?;

        if !is_identifier(&raw.name) {
            return Err(err(
                source.top_field("name"),
                format!(
                    "field `name`: {:?} must be non-empty and use only letters, digits, '_', '-', '.'",
                    raw.name
                ),
            ));
        }
        let device = match &raw.device {
            None => DeviceSpec::Auto,
            Some(d) => DeviceSpec::parse(d).ok_or_else(|| {
                err(
                    source.top_field("device"),
                    format!("field `device`: {d:?} is not one of cpu, auto, cuda:N"),
                )
            })?,
        };
        if let DeviceSpec::Cuda(_) = device {
            return Err(err(
                source.top_field("device"),
                "field `device`: this build has no CUDA support; use `cpu` or `auto`".into(),
            ));
        }
        if raw.stages.is_empty() {
            return Err(err(
                source.top_field("stages"),
                "field `stages`: at least one stage is required".into(),
            ));
        }

        let mut stages = BTreeMap::new();
        for (name, rs) in raw.stages {
            let line = source.stage(&name);
            if !is_identifier(&name) {
                return Err(err(
                    line,
                    format!("stage name {name:?} must use only letters, digits, '_', '-', '.'"),
                ));
            }
            let Some(kind) = registry.get(&rs.kind) else {
                return Err(err(
                    source.stage_field(&name, "kind"),
                    format!(
                        "stage `{name}`: unknown kind `{}`; known kinds: {}",
                        rs.kind,
                        registry.names().join(", ")
                    ),
                ));
            };
            let params = match rs.params {
                None | Some(Value::Null) => serde_json::Map::new(),
                Some(Value::Object(m)) => m,
                Some(other) => {
                    return Err(err(
                        source.stage_field(&name, "params"),
                        format!("stage `{name}`: `params` must be a mapping, found {other}"),
                    ))
                }
            };
            let mut matrix = BTreeMap::new();
            for (key, v) in rs.matrix {
                let at = source.stage_field(&name, &key).or(line);
                let axis = parse_axis(&name, &key, v, kind.as_ref()).map_err(|m| err(at, m))?;
                if key != "seed" && params.contains_key(&key) {
                    return Err(err(
                        at,
                        format!("stage `{name}`: `{key}` is set both in `params` and in `matrix`"),
                    ));
                }
                matrix.insert(key, axis);
            }
            let resources = match rs.resources {
                None | Some(Value::Null) => Resources::default(),
                Some(v) => {
                    let at = source.stage_field(&name, "resources").or(line);
                    let r: Resources = serde_json::from_value(v)
                        .map_err(|e| err(at, format!("stage `{name}`: field `resources`: {e}")))?;
                    r.check()
                        .map_err(|m| err(at, format!("stage `{name}`: field `resources`: {m}")))?;
                    r
                }
            };
            stages.insert(
                name.clone(),
                StageSpec {
                    name,
                    kind: rs.kind,
                    needs: rs.needs,
                    params,
                    matrix,
                    resources,
                },
            );
        }

        for spec in stages.values() {
            let mut seen = std::collections::BTreeSet::new();
            for need in &spec.needs {
                if need == &spec.name {
                    return Err(err(
                        source.stage_field(&spec.name, "needs"),
                        format!("stage `{}` needs itself", spec.name),
                    ));
                }
                if !stages.contains_key(need) {
                    return Err(err(
                        source.stage_field(&spec.name, "needs"),
                        format!(
                            "stage `{}` needs `{need}`, which is not a stage of this manifest (stages: {})",
                            spec.name,
                            stages.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                if !seen.insert(need) {
                    return Err(err(
                        source.stage_field(&spec.name, "needs"),
                        format!("stage `{}` lists `{need}` twice in `needs`", spec.name),
                    ));
                }
            }
        }
        if let Some(cycle) = super::dag::find_cycle(&stages) {
            return Err(err(
                source.stage(&cycle[0]),
                format!("the stages form a cycle: {}", cycle.join(" -> ")),
            ));
        }

        // Each kind validates its own parameters, for every matrix combination it will see.
        for spec in stages.values() {
            let kind = registry.get(&spec.kind).expect("checked above");
            for combo in super::matrix::static_combinations(&spec.matrix) {
                let params = super::matrix::merged_params(&spec.params, &combo);
                if let Err(message) = kind.validate(&params) {
                    let field = message.field.as_deref();
                    let line = field
                        .and_then(|f| source.stage_field(&spec.name, f))
                        .or_else(|| source.stage_field(&spec.name, "params"))
                        .or_else(|| source.stage(&spec.name));
                    let at = if combo.is_empty() {
                        String::new()
                    } else {
                        format!(" (matrix {})", super::matrix::label(&combo))
                    };
                    return Err(err(
                        line,
                        format!("stage `{}` params{at}: {}", spec.name, message.message),
                    ));
                }
            }
        }

        let workdir = match (workdir_override, &raw.workdir) {
            (Some(w), _) => w.to_path_buf(),
            (None, Some(w)) => w.clone(),
            (None, None) => PathBuf::from(".pipeline").join(&raw.name),
        };
        if let Some(file) = file_in_the_way(&workdir) {
            let message = format!(
                "workdir {} cannot be used: {} is a file, not a directory",
                workdir.display(),
                file.display()
            );
            return Err(match workdir_override {
                Some(_) => PipelineError::Usage(format!("--workdir: {message}")),
                None => err(
                    source.top_field("workdir"),
                    format!("field `workdir`: {message}"),
                ),
            });
        }
        let data_root = std::env::var_os(DATA_ROOT_ENV)
            .map(PathBuf::from)
            .or(raw.data_root);

        Ok(Manifest {
            path: path.to_path_buf(),
            name: raw.name,
            seed: raw.seed,
            workdir,
            data_root,
            mirror: raw.mirror,
            device,
            stages,
            source,
        })
    }

    /// Line of a stage's definition, for messages about it.
    pub fn stage_line(&self, stage: &str) -> Option<usize> {
        self.source.stage(stage)
    }

    /// Line of `field` inside a stage's block (its params or matrix), for messages about it.
    pub fn field_line(&self, stage: &str, field: &str) -> Option<usize> {
        self.source.stage_field(stage, field)
    }
}

/// One matrix entry: a non-empty list of distinct scalars, or `all` for kinds that expand it.
fn parse_axis(
    stage: &str,
    key: &str,
    value: Value,
    kind: &dyn super::registry::StageKind,
) -> std::result::Result<MatrixAxis, String> {
    let values = match value {
        Value::String(s) if s == "all" => {
            if kind.expandable_keys().contains(&key) {
                return Ok(MatrixAxis::All);
            }
            let expands = kind.expandable_keys();
            let hint = if expands.is_empty() {
                String::new()
            } else {
                format!(" (it expands: {})", expands.join(", "))
            };
            return Err(format!(
                "stage `{stage}`: matrix key `{key}: all` is not supported by kind `{}`{hint}",
                kind.name()
            ));
        }
        Value::Array(values) => values,
        other => {
            return Err(format!(
                "stage `{stage}`: matrix `{key}` must be a list or `all`, found {other}"
            ))
        }
    };
    if values.is_empty() {
        return Err(format!("stage `{stage}`: matrix `{key}` is an empty list"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for value in &values {
        if value.is_array() || value.is_object() || value.is_null() {
            return Err(format!(
                "stage `{stage}`: matrix `{key}` values must be scalars, found {value}"
            ));
        }
        if key == "seed" && value.as_u64().is_none() {
            return Err(format!(
                "stage `{stage}`: matrix `seed` values must be non-negative integers, found {value}"
            ));
        }
        if !seen.insert(value.to_string()) {
            return Err(format!(
                "stage `{stage}`: matrix `{key}` lists {value} twice"
            ));
        }
    }
    Ok(MatrixAxis::Values(values))
}

/// The nearest existing ancestor of `dir` (itself included) when it is not a directory: the
/// workdir could never be created there.
fn file_in_the_way(dir: &Path) -> Option<PathBuf> {
    let existing = dir
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| a.exists())?;
    (!existing.is_dir()).then(|| existing.to_path_buf())
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && s != "."
        && s != ".."
}

/// Finds the lines of keys in the manifest text. serde gives locations for syntax and type
/// errors only; semantic errors (unknown kind, cycles, params) are located by indentation.
#[derive(Debug, Clone)]
struct SourceLines {
    lines: Vec<String>,
}

impl SourceLines {
    fn new(text: &str) -> Self {
        SourceLines {
            lines: text.lines().map(str::to_string).collect(),
        }
    }

    fn indent(line: &str) -> usize {
        line.len() - line.trim_start().len()
    }

    fn key_of(line: &str) -> Option<&str> {
        let t = line.trim_start();
        if t.starts_with('#') {
            return None;
        }
        let t = t.strip_prefix("- ").unwrap_or(t);
        let (key, _) = t.split_once(':')?;
        Some(key.trim().trim_matches(|c| c == '"' || c == '\''))
    }

    /// 1-based line of a top-level key.
    fn top_field(&self, field: &str) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| Self::indent(l) == 0 && Self::key_of(l) == Some(field))
            .map(|i| i + 1)
    }

    /// Block of children of the key at `start` (0-based): (first child, end exclusive).
    fn children(&self, start: usize) -> (usize, usize) {
        let base = Self::indent(&self.lines[start]);
        let mut end = start + 1;
        while end < self.lines.len() {
            let l = &self.lines[end];
            if !l.trim().is_empty() && !l.trim_start().starts_with('#') && Self::indent(l) <= base {
                break;
            }
            end += 1;
        }
        (start + 1, end)
    }

    fn find_in(&self, (from, to): (usize, usize), key: &str) -> Option<usize> {
        (from..to).find(|&i| Self::key_of(&self.lines[i]) == Some(key))
    }

    fn stage_index(&self, stage: &str) -> Option<usize> {
        let stages = self.top_field("stages")? - 1;
        self.find_in(self.children(stages), stage)
    }

    /// Line of an earlier `key` of the same block as the one on `line` (1-based), if the key
    /// on `line` is in block style; a flow mapping (`{a: 1, a: 2}`) gives `line` itself.
    fn earlier_key(&self, line: usize, key: &str) -> Option<usize> {
        let at = self.lines.get(line.checked_sub(1)?)?;
        if Self::key_of(at) != Some(key) {
            return Some(line);
        }
        let indent = Self::indent(at);
        for i in (0..line - 1).rev() {
            let l = &self.lines[i];
            if l.trim().is_empty() || l.trim_start().starts_with('#') {
                continue;
            }
            if Self::indent(l) < indent {
                return None;
            }
            if Self::indent(l) == indent && Self::key_of(l) == Some(key) {
                return Some(i + 1);
            }
        }
        None
    }

    fn stage(&self, stage: &str) -> Option<usize> {
        self.stage_index(stage).map(|i| i + 1)
    }

    /// Line of `field` anywhere inside a stage's block (params and matrix included).
    fn stage_field(&self, stage: &str, field: &str) -> Option<usize> {
        let s = self.stage_index(stage)?;
        self.find_in(self.children(s), field).map(|i| i + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_lines_locate_nested_keys() {
        let text = "name: x\nseed: 1\nstages:\n  a:\n    kind: k\n    params:\n      lr: 1\n  b:\n    kind: k\n";
        let s = SourceLines::new(text);
        assert_eq!(s.top_field("seed"), Some(2));
        assert_eq!(s.stage("b"), Some(8));
        assert_eq!(s.stage_field("a", "lr"), Some(7));
        assert_eq!(s.stage_field("b", "lr"), None);
    }

    #[test]
    fn device_strings() {
        assert_eq!(DeviceSpec::parse("cuda:1"), Some(DeviceSpec::Cuda(1)));
        assert_eq!(DeviceSpec::parse("gpu"), None);
    }
}
