//! Duplicate mapping keys anywhere in a YAML document. YAML parsers (serde_norway included) keep
//! the last of repeated keys when filling maps, so `rounds: 2` then `rounds: 5` would silently run
//! with 5. This walks the whole document once and fails on the second occurrence of a key; the
//! error is raised while the key itself is deserialized, so serde_norway marks it with the key's
//! own line.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A repeated key: its text and the (1-based) line of the repetition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    pub key: String,
    pub line: Option<usize>,
}

/// The first repeated key of `text`, if any. Syntax errors are left to the real parse.
pub fn find_duplicate(text: &str) -> Option<DuplicateKey> {
    let de = serde_norway::Deserializer::from_str(text);
    match Node.deserialize(de) {
        Ok(()) => None,
        Err(e) => {
            let message = e.to_string();
            let key = message
                .split(DUPLICATE_MARK)
                .nth(1)?
                .split('\u{1}')
                .next()?;
            Some(DuplicateKey {
                key: key.to_string(),
                line: e.location().map(|l| l.line()),
            })
        }
    }
}

/// Brackets the key in the error text so it can be recovered from serde_norway's message.
const DUPLICATE_MARK: &str = "\u{1}duplicate key\u{1}";

/// Any YAML node; mappings check their keys, everything else is walked and dropped.
struct Node;

impl<'de> DeserializeSeed<'de> for Node {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        Node.deserialize(d)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged value (`!tag x`): the tag is not a key; walk the value.
        let (IgnoredAny, variant) = data.variant::<IgnoredAny>()?;
        de::VariantAccess::newtype_variant_seed(variant, Node)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Node)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while map.next_key_seed(Key { seen: &mut seen })?.is_some() {
            map.next_value_seed(Node)?;
        }
        Ok(())
    }
}

/// A mapping key: scalars are compared by their text, and a repeat fails right here.
struct Key<'a> {
    seen: &'a mut HashSet<String>,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Key<'_> {
    fn insert<E: de::Error>(self, key: String) -> Result<(), E> {
        if self.seen.insert(key.clone()) {
            Ok(())
        } else {
            Err(E::custom(format!("{DUPLICATE_MARK}{key}\u{1}")))
        }
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.insert(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.insert(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.insert(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.insert(v.to_string())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.insert(v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.insert("null".into())
    }
    // Complex keys (a mapping or list used as a key) are walked for their own duplicates only.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        NodeVisitor.visit_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        NodeVisitor.visit_map(map)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        NodeVisitor.visit_enum(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(text: &str) -> Option<(String, Option<usize>)> {
        find_duplicate(text).map(|d| (d.key, d.line))
    }

    #[test]
    fn finds_repeated_keys_at_any_depth_with_the_repeat_line() {
        assert_eq!(dup("a: 1\nb: 2\na: 3\n"), Some(("a".into(), Some(3))));
        assert_eq!(
            dup("s:\n  x:\n    params:\n      rounds: 2\n      lr: 1\n      rounds: 5\n"),
            Some(("rounds".into(), Some(6)))
        );
        assert_eq!(
            dup("m: {budget: [1], budget: [2]}\n"),
            Some(("budget".into(), Some(1)))
        );
        assert_eq!(
            dup("l:\n  - {k: 1}\n  - {k: 1, j: 2, k: 3}\n"),
            Some(("k".into(), Some(3)))
        );
        assert_eq!(dup("1: a\n1: b\n"), Some(("1".into(), Some(2))));
    }

    #[test]
    fn same_key_in_different_mappings_is_fine() {
        assert_eq!(dup("a:\n  k: 1\nb:\n  k: 1\nc: [{k: 1}, {k: 2}]\n"), None);
        assert_eq!(dup("a: &x {k: 1}\nb: *x\n"), None);
        assert_eq!(dup("t: !tag {k: 1}\n"), None);
    }
}
