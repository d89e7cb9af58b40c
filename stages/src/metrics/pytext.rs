//! Python `str` semantics the reference scorers rely on: `str.lower()`, `str.split()` and the
//! Unicode classes `\w`, `\s`, `\d` of Python's `re` — so tokenization matches byte for byte.
//!
//! Python 3.11 uses Unicode 14.0; Rust's `char` tables and the `regex` crate use newer
//! versions, so characters assigned after 14.0 may differ. No real text here uses them.

/// Python's `re` `\w` for `str` patterns is `str.isalnum() or "_"`, which is exactly the
/// letter and number general categories plus underscore (checked over every code point with
/// Python 3.11). The `regex` crate's `\w` also includes combining marks (Telugu vowel signs,
/// Arabic harakat), so the tokenizer rules use this class instead.
pub(crate) const PY_WORD_CLASS: &str = r"[\p{L}\p{N}_]";

/// Python's `re` `\s` for `str` patterns, equal to `str.isspace()`: the `regex` crate's `\s`
/// lacks the information separators U+001C..U+001F.
pub(crate) const PY_SPACE_CLASS: &str = r"[\t\n\x0B\x0C\r\x1C-\x1F \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]";

/// `str.isspace()` of Python 3.11.
pub(crate) fn is_py_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\x0B'
            | '\x0C'
            | '\r'
            | '\x1C'..='\x1F'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// `str.split()` with no separator: runs of Python whitespace, no empty pieces.
pub(crate) fn py_split(text: &str) -> impl Iterator<Item = &str> {
    text.split(is_py_space).filter(|piece| !piece.is_empty())
}

/// `str.lower()`: full Unicode lowercase mapping with the final-sigma rule, which Rust's
/// `str::to_lowercase` implements the same way.
pub(crate) fn py_lower(text: &str) -> String {
    text.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_python_on_separators_rust_does_not_treat_as_whitespace() {
        // Python: "a\x1cb\u00a0c  d\u3000".split() == ['a', 'b', 'c', 'd']
        let got: Vec<&str> = py_split("a\x1cb\u{a0}c  d\u{3000}").collect();
        assert_eq!(got, ["a", "b", "c", "d"]);
        // U+200B ZERO WIDTH SPACE is not whitespace in Python.
        assert_eq!(py_split("a\u{200b}b").count(), 1);
    }

    #[test]
    fn lower_applies_final_sigma_like_python() {
        // Python: "ΟΔΟΣ ΣΑ".lower() == 'οδος σα' with a final sigma.
        assert_eq!(
            py_lower("ΟΔΟΣ ΣΑ"),
            "\u{3bf}\u{3b4}\u{3bf}\u{3c2} \u{3c3}\u{3b1}"
        );
        assert_eq!(py_lower("İ"), "i\u{307}");
    }
}
