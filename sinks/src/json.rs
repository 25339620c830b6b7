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

/// `text` (valid JSON from `serde_json`) with the characters `needs_escape` names escaped.
pub fn escape_unsafe(text: String) -> String {
    if !text.chars().any(needs_escape) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs_escape(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
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
    fn clean_text_is_unchanged() {
        let json = to_string(&serde_json::json!({"a": [1, "x"]})).expect("encodes");
        assert_eq!(json, r#"{"a":[1,"x"]}"#);
    }
}
