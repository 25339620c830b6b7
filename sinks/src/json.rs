//! JSON that is safe for line readers: what `serde_json` writes, with U+2028,
//! U+2029, DEL and the C1 controls also escaped as `\uXXXX` (`serde_json`
//! escapes only C0). Shared by the sinks; not a plugin.
//!
//! Post-processing is exact: `serde_json` writes structure in ASCII, so these
//! characters can only stand inside strings, where `\uXXXX` means the same.

use serde::Serialize;

/// Whether `c` must not appear raw in JSON that line readers consume.
fn needs_escape(c: char) -> bool {
    matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}')
}

/// Where the next character `needs_escape` names starts in `text`, at or
/// after `from`, and how many bytes it takes. In UTF-8 they are `7F`,
/// `C2 80`..`C2 9F` and `E2 80 A8`/`E2 80 A9`: whole runs without `7F`,
/// `C2` or `E2` are skipped at once (neither lead byte is ever inside
/// another character).
fn next_unsafe(text: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let rest = bytes.get(from..)?;
    memchr::memchr3_iter(0x7f, 0xc2, 0xe2, rest)
        .map(|i| from + i)
        .find_map(|at| {
            let len = match bytes[at..] {
                [0x7f, ..] => 1,
                [0xc2, 0x80..=0x9f, ..] => 2,
                [0xe2, 0x80, 0xa8 | 0xa9, ..] => 3,
                _ => return None,
            };
            Some((at, len))
        })
}

/// `text` (valid JSON from `serde_json`) with the characters `needs_escape` names escaped.
pub fn escape_unsafe(text: String) -> String {
    let mut next = next_unsafe(&text, 0);
    if next.is_none() {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut done = 0;
    while let Some((at, len)) = next {
        out.push_str(&text[done..at]);
        for c in text[at..at + len].chars() {
            debug_assert!(needs_escape(c));
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        }
        done = at + len;
        next = next_unsafe(&text, done);
    }
    out.push_str(&text[done..]);
    out
}

/// Compact JSON, safely escaped.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string(value).map(escape_unsafe)
}

/// Indented JSON, safely escaped.
pub fn to_string_pretty<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(value).map(escape_unsafe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breakers_and_c1_are_escaped_and_round_trip() {
        let raw = "a\u{2028}b\u{2029}c\u{85}d\u{9b}[31me\u{7f}\u{1b}[2Jf ok é 日本";
        let json = to_string(&serde_json::json!({ "name": raw })).expect("encodes");
        assert!(json.is_ascii() || !json.chars().any(needs_escape), "{json}");
        assert!(!json.chars().any(|c| c.is_control()), "{json}");
        assert!(json.contains("\\u2028") && json.contains("\\u2029"));
        assert!(json.contains("\\u0085") && json.contains("\\u009b"));
        assert!(json.contains("\\u001b"), "C0 by serde_json: {json}");
        assert_eq!(json.lines().count(), 1);
        assert!(json.contains("ok é 日本"), "other text untouched: {json}");
        let back: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(back["name"], raw);
        let pretty = to_string_pretty(&serde_json::json!({ "name": raw })).expect("encodes");
        assert!(!pretty.chars().any(needs_escape));
    }

    #[test]
    fn every_character_is_escaped_as_it_was_one_by_one() {
        // The escaping as it was: character by character.
        let by_char = |text: &str| -> String {
            let mut out = String::new();
            for c in text.chars() {
                if needs_escape(c) {
                    out.push_str(&format!("\\u{:04x}", u32::from(c)));
                } else {
                    out.push(c);
                }
            }
            out
        };
        let mut all = String::new();
        for n in (0..0x3000u32).chain([0xfeff, 0xffff, 0x1f600, 0x10ffff]) {
            if let Some(c) = char::from_u32(n) {
                all.push(c);
                all.push('a');
            }
        }
        for text in [
            all.as_str(),
            "",
            "\u{7f}",
            "\u{2028}\u{2029}\u{2027}\u{202a}",
            "ends in \u{9f}",
            "\u{85}starts",
            "\u{a0}\u{c2}\u{e2}\u{2000}\u{20ac} not escaped",
        ] {
            assert_eq!(escape_unsafe(text.to_string()), by_char(text), "{text:?}");
        }
    }

    #[test]
    fn clean_text_is_unchanged() {
        let json = to_string(&serde_json::json!({"a": [1, "x"]})).expect("encodes");
        assert_eq!(json, r#"{"a":[1,"x"]}"#);
    }
}
