//! JSON helpers for collector payloads: fields parsed lazily as raw JSON, scalars that may be
//! numbers or numeric strings, and Python-compatible text rendering.

pub(crate) mod scan;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// The kind of a raw JSON value, read from its first byte (serde_json guarantees no
/// leading whitespace in a `RawValue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Number,
    String,
    Object,
    Array,
}

/// The text of one JSON value exactly as it appears in its document: valid JSON with no
/// surrounding whitespace. Only a parser makes one, so helpers can rely on that.
#[derive(Debug, Clone, Copy)]
pub struct Raw<'a> {
    text: &'a str,
    /// `true` when the text is known to have no `\` (so a string needs no unescaping);
    /// `false` means "not known". The scanner knows it from its pass over a string;
    /// searching again for each field read was ~7% of the guest's time for raw-logs.
    plain: bool,
}

impl<'a> Raw<'a> {
    /// The value's JSON text.
    pub fn get(self) -> &'a str {
        self.text
    }

    /// `text` was checked to be one JSON value by the caller (the scanner), which also
    /// knows whether it contains a backslash (`plain` false when unsure).
    pub(crate) fn validated(text: &'a str, plain: bool) -> Self {
        Raw { text, plain }
    }
}

/// Two values are equal when their JSON text is: `plain` only caches a fact about the text.
impl PartialEq for Raw<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Raw<'_> {}

/// Not known to be plain: `as_str` looks for escapes when (and if) it is asked.
impl<'a> From<&'a RawValue> for Raw<'a> {
    fn from(v: &'a RawValue) -> Self {
        Raw {
            text: v.get(),
            plain: false,
        }
    }
}

/// Borrowed from the input, like `&RawValue` (which checks it).
impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'de RawValue>::deserialize(d).map(Raw::from)
    }
}

/// Classify a raw JSON value.
pub fn kind(raw: Raw<'_>) -> Kind {
    match raw.get().as_bytes().first() {
        Some(b'n') => Kind::Null,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'"') => Kind::String,
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        _ => Kind::Number,
    }
}

/// A JSON string value, unescaped only when it contains escapes.
pub fn as_str(raw: Raw<'_>) -> Option<Cow<'_, str>> {
    if kind(raw) != Kind::String {
        return None;
    }
    let s = raw.get();
    if raw.plain {
        return Some(Cow::Borrowed(&s[1..s.len() - 1]));
    }
    unescape(s)
}

/// The JSON string `s` unescaped, for values not known to be plain (borrowed when it has no
/// escapes after all). Kept out of line: the scanner's plain strings never get here.
#[inline(never)]
fn unescape(s: &str) -> Option<Cow<'_, str>> {
    let inner = &s[1..s.len() - 1];
    if memchr::memchr(b'\\', inner.as_bytes()).is_none() {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(s).ok().map(Cow::Owned)
}

/// The text of a scalar as Python's `str()` would render the decoded value, used where the
/// original processor formatted values into messages and tags. Strings are unquoted; numbers
/// keep their JSON spelling; booleans become `true`/`false`; null is `None`;
/// objects and arrays keep their JSON text.
pub fn text(raw: Raw<'_>) -> Cow<'_, str> {
    match kind(raw) {
        Kind::String => as_str(raw).unwrap_or(Cow::Borrowed("")),
        Kind::Null => Cow::Borrowed("None"),
        _ => Cow::Borrowed(raw.get()),
    }
}

/// Text of a field that should be a string, or `None` when it is missing, null or empty.
pub fn non_empty_text(raw: Option<Raw<'_>>) -> Option<Cow<'_, str>> {
    let raw = raw?;
    if kind(raw) == Kind::Null {
        return None;
    }
    let t = text(raw);
    if t.is_empty() { None } else { Some(t) }
}

/// A number given as a JSON number or as a numeric string.
pub fn as_f64(raw: Raw<'_>) -> Option<f64> {
    match kind(raw) {
        Kind::Number => raw.get().parse().ok(),
        Kind::String => as_str(raw)?.trim().parse().ok(),
        _ => None,
    }
}

/// Render a count-like value for a message: integers (also integral numeric strings) as
/// integers, other numbers as given, missing or null as `0`.
pub fn number_text(raw: Option<Raw<'_>>) -> Cow<'_, str> {
    let Some(raw) = raw else {
        return Cow::Borrowed("0");
    };
    match kind(raw) {
        Kind::Null => Cow::Borrowed("0"),
        Kind::Number => Cow::Borrowed(raw.get()),
        Kind::String => {
            let s = as_str(raw).unwrap_or_default();
            let t = s.trim();
            if t.parse::<i64>().is_ok() || t.parse::<f64>().is_ok() {
                Cow::Owned(t.to_string())
            } else {
                s
            }
        }
        _ => text(raw),
    }
}

/// Whether `needle`, a short word, occurs in `haystack`. Searchers (`str::contains`'s
/// two-way, memchr's `memmem`) are set up on every call, which cost more than the search for
/// the transforms' few-letter words: memmem's set-up was ~550 instructions per raw-queries
/// message. Instead, SIMD `memchr` finds each candidate first byte and the rest is compared
/// (at most `needle.len()` bytes per candidate).
pub fn contains(haystack: &str, needle: &str) -> bool {
    let h = haystack.as_bytes();
    let Some((&first, rest)) = needle.as_bytes().split_first() else {
        return true;
    };
    memchr::memchr_iter(first, h).any(|i| h[i + 1..].starts_with(rest))
}

/// Quote `s` as a JSON string into `out`.
pub fn push_json_string(out: &mut String, s: &str) {
    // Nearly all text needs no escape: quote it in place. Otherwise serde_json's escaping
    // (the reference; writing into a String cannot fail) into a temporary.
    if !scan::needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    let quoted = serde_json::to_string(s).unwrap_or_default();
    out.push_str(&quoted);
}

/// The members of a JSON object in document order, values left raw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Members<'a>(pub Vec<(Cow<'a, str>, Raw<'a>)>);

impl<'a> Members<'a> {
    /// The last value given for `key` (JSON objects with duplicate keys keep the last one).
    pub fn get(&self, key: &str) -> Option<Raw<'a>> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The members of the JSON object `text` (whitespace around it allowed), or serde_json's
    /// error when `text` is not one JSON object.
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        match scan::object(text) {
            Some(m) => Ok(m),
            // Invalid, or a rare shape the scanner leaves to serde_json: it decides and words
            // the error.
            None => serde_json::from_str(text),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'a>, A::Error> {
                // Collector envelopes have 7 members: one allocation instead of three growths.
                let mut v = Vec::with_capacity(8);
                while let Some((k, val)) = map.next_entry::<Cow<'de, str>, Raw<'de>>()? {
                    v.push((k, val));
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Check that `text` is one JSON object (whitespace around it allowed), with serde_json's
/// error when it is not. A fast reader answers for valid objects; serde_json words the rest.
pub fn validate_object(text: &str) -> Result<(), serde_json::Error> {
    if scan::is_object(text) {
        return Ok(());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text).map(|_| ())
}

/// Parse `raw` as an object's members when it is an object.
pub fn members(raw: Raw<'_>) -> Option<Members<'_>> {
    if kind(raw) != Kind::Object {
        return None;
    }
    Members::parse(raw.get()).ok()
}

/// The last member of `raw` when it is a non-empty object (an OTLP/JSON `AnyValue` holds
/// one), read without collecting the members.
pub fn last_member(raw: Raw<'_>) -> Option<(Cow<'_, str>, Raw<'_>)> {
    if kind(raw) != Kind::Object {
        return None;
    }
    let mut last = None;
    let mut c = scan::Cursor::new(raw.get());
    let read = c.object(|k, c| {
        last = Some((k, c.raw()?));
        Some(())
    });
    match read {
        Some(()) => last,
        // Only what the scanner leaves to serde_json (deep nesting) gets here.
        None => members(raw)?.0.pop(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Raw<'_> {
        serde_json::from_str::<&RawValue>(s).unwrap().into()
    }

    #[test]
    fn scalars_render_like_python() {
        assert_eq!(text(raw(r#""a\"b""#)), "a\"b");
        assert_eq!(text(raw("12")), "12");
        assert_eq!(text(raw("1.5")), "1.5");
        assert_eq!(text(raw("true")), "true");
        assert_eq!(text(raw("null")), "None");
    }

    #[test]
    fn numbers_from_strings() {
        assert_eq!(as_f64(raw(r#"" 12.5 ""#)), Some(12.5));
        assert_eq!(as_f64(raw("7")), Some(7.0));
        assert_eq!(as_f64(raw(r#""abc""#)), None);
        assert_eq!(number_text(Some(raw(r#""42""#))), "42");
        assert_eq!(number_text(None), "0");
        assert_eq!(number_text(Some(raw("null"))), "0");
    }

    #[test]
    fn contains_finds_substrings() {
        assert!(contains("mysql deadlocks", "deadlock"));
        assert!(contains("héllo wörld", "wö"));
        assert!(contains("x", ""));
        assert!(!contains("dead lock", "deadlock"));
        assert!(!contains("", "a"));
        // Agrees with std on every substring (and near miss) of a text with repeats.
        let text = "selselect sel é select";
        for i in 0..text.len() {
            for j in i..=text.len() {
                if let Some(needle) = text.get(i..j) {
                    assert!(contains(text, needle), "{needle:?}");
                    let miss = format!("{needle}q");
                    assert_eq!(contains(text, &miss), text.contains(&miss), "{miss:?}");
                }
            }
        }
    }

    #[test]
    fn members_keep_order_and_last_duplicate() {
        let r = raw(r#"{"b":1,"a":"x","b":2}"#);
        let m = members(r).unwrap();
        let keys: Vec<_> = m.0.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["b", "a", "b"]);
        assert_eq!(m.get("b").unwrap().get(), "2");
        assert!(members(raw("[1]")).is_none());
    }

    #[test]
    fn strings_are_quoted_as_serde_json_quotes_them() {
        // Every byte that needs an escape, at every position around the eight-byte steps.
        let specials = ['"', '\\', '\n', '\u{0}', '\u{1f}'];
        for len in 0..20 {
            let plain: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let mut cases = vec![
                plain.clone(),
                format!("{plain}é\u{7f}~ "),
                format!("{plain}\u{1f600}"),
            ];
            for at in 0..=len {
                for c in specials {
                    let mut t = plain.clone();
                    t.insert(at, c);
                    cases.push(t);
                }
            }
            for t in cases {
                let mut out = String::from("x");
                push_json_string(&mut out, &t);
                assert_eq!(
                    out,
                    format!("x{}", serde_json::to_string(&t).unwrap()),
                    "{t:?}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_is_quoted_as_serde_json_quotes_it(t in "\\PC*|[\\x00-\\x7f]{0,40}") {
            let mut out = String::new();
            push_json_string(&mut out, &t);
            proptest::prop_assert_eq!(out, serde_json::to_string(&t).unwrap());
        }
    }

    #[test]
    fn last_member_is_the_last_of_members() {
        let deep = format!("{{\"a\":1,\"b\":{}{}}}", "[".repeat(120), "]".repeat(120));
        for text in [
            r#"{"stringValue":"x"}"#,
            r#"{"a":1,"a":{"b":[2]}}"#,
            r#"{"k\u00e9":true}"#,
            r#"{}"#,
            "[1]",
            "\"s\"",
            &deep,
        ] {
            let r = raw(text);
            assert_eq!(
                last_member(r),
                members(r).and_then(|mut m| m.0.pop()),
                "{text}"
            );
        }
        assert!(last_member(raw(&deep)).is_some());
    }
}
