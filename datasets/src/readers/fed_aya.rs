//! Fed-Aya readers: FedLLM-Bench's 38-client training file and its per-language test sets.
//!
//! The client file (`aya_38c_25k.json`: a JSON object mapping each client, i.e. annotator,
//! to a list of `{instruction, response, language, ...}`) is not obtainable here; this reader
//! is tested on small files written in exactly that schema. Client order is the file's key
//! order, as Python's `json.load` keeps it — the authors' unseen pool is defined by index in
//! that order (`enumerate(data.values())` in `src/data/fedaya_dataset.py`).

use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::{DatasetError, Result};

/// One instruction/response pair with its language code (`ar`, `en`, …).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AyaRecord {
    pub instruction: String,
    pub response: String,
    pub language: String,
}

/// One client of the 38-client file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AyaClient {
    pub key: String,
    pub records: Vec<AyaRecord>,
}

/// A JSON object read as (key, value) pairs in file order (serde_json's own map sorts keys
/// unless its `preserve_order` feature is on; this keeps the dependency surface unchanged).
struct OrderedObject<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedObject<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct ObjectVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for ObjectVisitor<V> {
            type Value = OrderedObject<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, V>()? {
                    if out.iter().any(|(seen, _): &(String, V)| *seen == k) {
                        return Err(serde::de::Error::custom(format!("duplicate key `{k}`")));
                    }
                    out.push((k, v));
                }
                Ok(OrderedObject(out))
            }
        }
        d.deserialize_map(ObjectVisitor(PhantomData))
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let file = File::open(path).map_err(|e| DatasetError::io(path, e))?;
    if file
        .metadata()
        .map_err(|e| DatasetError::io(path, e))?
        .len()
        == 0
    {
        return Err(DatasetError::EmptyFile {
            path: path.into(),
            expected: "a JSON object keyed by client or language, each a list of records",
        });
    }
    serde_json::from_reader(BufReader::new(file)).map_err(|e| DatasetError::BadJson {
        path: path.into(),
        message: e.to_string(),
    })
}

/// Reads the client file, keeping only records whose `language` is in `languages`
/// (the authors prune the others before splitting). Clients stay in file order.
pub fn read_clients_file(path: &Path, languages: &[String]) -> Result<Vec<AyaClient>> {
    let object: OrderedObject<Vec<AyaRecord>> = read_json(path)?;
    if object.0.is_empty() {
        return Err(DatasetError::EmptyFile {
            path: path.into(),
            expected: "a JSON object with at least one client",
        });
    }
    Ok(object
        .0
        .into_iter()
        .map(|(key, records)| AyaClient {
            key,
            records: records
                .into_iter()
                .filter(|r| languages.contains(&r.language))
                .collect(),
        })
        .collect())
}

/// Language names used as keys of FedLLM-Bench's `test_datasets.json`, with their codes.
pub const AYA_TEST_SET_LANGUAGES: [(&str, &str); 8] = [
    ("Standard_Arabic", "ar"),
    ("English", "en"),
    ("Spanish", "es"),
    ("French", "fr"),
    ("Portuguese", "pt"),
    ("Russian", "ru"),
    ("Telugu", "te"),
    ("Simplified_Chinese", "zh"),
];

#[derive(Debug, Deserialize)]
struct TestPair {
    instruction: String,
    reference: String,
}

/// Reads the test sets (object keyed by language name → list of `{instruction, reference}`)
/// as records with language codes, in file order; `reference` becomes `response`.
pub fn read_test_sets(path: &Path) -> Result<Vec<AyaRecord>> {
    let object: OrderedObject<Vec<TestPair>> = read_json(path)?;
    let mut out = Vec::new();
    for (name, pairs) in object.0 {
        let code = AYA_TEST_SET_LANGUAGES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .ok_or_else(|| DatasetError::BadJson {
                path: path.into(),
                message: format!(
                    "unknown language key `{name}` (known: {})",
                    AYA_TEST_SET_LANGUAGES.map(|(n, _)| n).join(", ")
                ),
            })?;
        out.extend(pairs.into_iter().map(|p| AyaRecord {
            instruction: p.instruction,
            response: p.reference,
            language: code.into(),
        }));
    }
    if out.is_empty() {
        return Err(DatasetError::EmptyFile {
            path: path.into(),
            expected: "at least one instruction/reference pair",
        });
    }
    Ok(out)
}
