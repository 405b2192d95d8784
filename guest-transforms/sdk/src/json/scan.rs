//! A validating single-pass reader for the members of one JSON object, the shape every
//! collector envelope and its `tags`/`payload` have.
//!
//! serde_json reads these through its generic `Deserializer` + `MapAccess` machinery and
//! scans every nested value twice (once to capture it raw, once to read its members); this
//! reader walks the bytes once and records where each member's key and value are. It accepts
//! only what serde_json accepts (RFC 8259, the same whitespace, numbers and escapes, nesting
//! up to 100 levels) and answers `None` for anything else, including the rare valid inputs it
//! does not handle (keys with invalid surrogate escapes, deeper nesting): callers then ask
//! serde_json, which decides and words the error. A differential test holds the two equal.

use super::{Members, Raw};
use std::borrow::Cow;

/// serde_json stops at 128 levels; stopping earlier only sends such inputs to serde_json.
const MAX_DEPTH: u32 = 100;

/// The members of the object `text` (surrounding whitespace allowed), or `None` when `text`
/// is not exactly one valid JSON object or needs serde_json to decide.
pub(crate) fn object(text: &str) -> Option<Members<'_>> {
    let mut r = Reader::new(text);
    r.ws();
    let members = r.members(None)?;
    r.end().then_some(members)
}

/// Members of an object whose value is itself an object, by its index in the outer members.
pub(crate) type Children<'a> = Vec<(usize, Members<'a>)>;

/// Like [`object`], and the members of every object-valued member too, read in the same
/// pass (a collector envelope's `tags` and `payload`), so they are not scanned twice.
pub(crate) fn object_with_children(text: &str) -> Option<(Members<'_>, Children<'_>)> {
    let mut r = Reader::new(text);
    let mut children = Vec::new();
    r.ws();
    let members = r.members(Some(&mut children))?;
    r.end().then_some((members, children))
}

/// Whether `text` is exactly one valid JSON object (`false` also for nesting deeper than
/// the reader goes, which serde_json may still accept).
pub(crate) fn is_object(text: &str) -> bool {
    let mut r = Reader::new(text);
    r.ws();
    r.peek() == Some(b'{') && r.nested(b'}', true).is_some() && r.end()
}

/// A cursor over one JSON document, for readers that know the shape they expect (the
/// OTLP/JSON logs reader): each method reads the value at the cursor, or answers `None` when
/// the input is invalid or not of the kind asked for, so the caller can leave the document
/// to serde_json. Values are checked exactly as [`object`] checks them.
pub(crate) struct Cursor<'a>(Reader<'a>);

impl<'a> Cursor<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut r = Reader::new(text);
        r.ws();
        Cursor(r)
    }

    /// Only whitespace is left.
    pub(crate) fn end(mut self) -> bool {
        self.0.end()
    }

    /// The value at the cursor is `null`: read it and answer `true`.
    pub(crate) fn null(&mut self) -> bool {
        self.0.literal(b"null").is_some()
    }

    /// Read a value of any kind, as its JSON text.
    pub(crate) fn raw(&mut self) -> Option<Raw<'a>> {
        let start = self.0.i;
        let plain = self.0.value()?;
        Some(Raw::validated(&self.0.s[start..self.0.i], plain))
    }

    /// Read the object at the cursor: `member` gets each key with the cursor at its value,
    /// and must read that value.
    pub(crate) fn object(
        &mut self,
        mut member: impl FnMut(Cow<'a, str>, &mut Self) -> Option<()>,
    ) -> Option<()> {
        self.open(b'{')?;
        if self.close(b'}')? {
            return Some(());
        }
        loop {
            let key = self.0.key()?;
            self.0.ws();
            if self.0.peek()? != b':' {
                return None;
            }
            self.0.i += 1;
            self.0.ws();
            member(key, self)?;
            if self.next(b'}')? {
                return Some(());
            }
        }
    }

    /// Read the array at the cursor: `element` is called with the cursor at each element,
    /// and must read it.
    pub(crate) fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.open(b'[')?;
        if self.close(b']')? {
            return Some(());
        }
        loop {
            element(self)?;
            if self.next(b']')? {
                return Some(());
            }
        }
    }

    fn open(&mut self, bracket: u8) -> Option<()> {
        let r = &mut self.0;
        if r.peek()? != bracket {
            return None;
        }
        r.depth += 1;
        if r.depth > MAX_DEPTH {
            return None;
        }
        r.i += 1;
        r.ws();
        Some(())
    }

    /// An empty object or array ends here: read its closing bracket.
    fn close(&mut self, bracket: u8) -> Option<bool> {
        let r = &mut self.0;
        if r.peek()? != bracket {
            return Some(false);
        }
        r.i += 1;
        r.depth -= 1;
        Some(true)
    }

    /// After an item: `,` (another follows) or the closing bracket (`true`).
    fn next(&mut self, bracket: u8) -> Option<bool> {
        let r = &mut self.0;
        r.ws();
        match r.peek()? {
            b',' => {
                r.i += 1;
                r.ws();
                Some(false)
            }
            _ => self.close(bracket)?.then_some(true),
        }
    }
}

struct Reader<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    depth: u32,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `w` that is zero (exact for the lowest such byte, which is
/// the only one used).
#[inline]
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGHS
}

/// High bit set in each byte of `w` that a JSON string cannot hold as is: `"`, `\` or a
/// control character (exact for the lowest such byte; any flag means there is one).
#[inline(always)]
fn special(w: u64) -> u64 {
    zero_bytes(w ^ (ONES * u64::from(b'"')))
        | zero_bytes(w ^ (ONES * u64::from(b'\\')))
        | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS)
}

/// Whether `s` has a byte that JSON escapes inside a string, eight bytes at a time.
pub(crate) fn needs_escape(s: &[u8]) -> bool {
    let mut chunks = s.chunks_exact(8);
    for chunk in &mut chunks {
        let mut w = [0; 8];
        w.copy_from_slice(chunk);
        if special(u64::from_le_bytes(w)) != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

impl<'a> Reader<'a> {
    fn new(text: &'a str) -> Self {
        Reader {
            s: text,
            b: text.as_bytes(),
            i: 0,
            depth: 0,
        }
    }

    /// Only whitespace is left.
    fn end(&mut self) -> bool {
        self.ws();
        self.i == self.b.len()
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// The members of the object at the cursor (`{`), leaving the cursor after its `}`;
    /// with `children`, object-valued members are read into it as well.
    fn members(&mut self, mut children: Option<&mut Children<'a>>) -> Option<Members<'a>> {
        if self.peek()? != b'{' {
            return None;
        }
        self.i += 1;
        let mut out = Vec::with_capacity(8);
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(Members(out));
        }
        loop {
            let key = self.key()?;
            self.ws();
            if self.peek()? != b':' {
                return None;
            }
            self.i += 1;
            self.ws();
            let start = self.i;
            let plain = match children.as_deref_mut() {
                Some(children) if self.peek()? == b'{' => {
                    self.depth += 1;
                    children.push((out.len(), self.members(None)?));
                    self.depth -= 1;
                    false
                }
                _ => self.value()?,
            };
            out.push((key, Raw::validated(&self.s[start..self.i], plain)));
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b'}' => {
                    self.i += 1;
                    return Some(Members(out));
                }
                _ => return None,
            }
        }
    }

    // Inlined into both readers (members, Cursor): as a call it cost raw-logs 7%.
    #[inline(always)]
    fn key(&mut self) -> Option<Cow<'a, str>> {
        let start = self.i;
        if self.string()? {
            self.escaped_key(start)
        } else {
            Some(Cow::Borrowed(&self.s[start + 1..self.i - 1]))
        }
    }

    /// Rare: let serde_json decode (it also rejects lone surrogates in keys, as here).
    #[inline(never)]
    fn escaped_key(&self, start: usize) -> Option<Cow<'a, str>> {
        serde_json::from_str::<String>(&self.s[start..self.i])
            .ok()
            .map(Cow::Owned)
    }

    /// Skip one value of any kind; `Some(true)` when it is a string without escapes (for
    /// other kinds `false`: only strings are unescaped).
    fn value(&mut self) -> Option<bool> {
        match self.peek()? {
            b'"' => return self.string().map(|escaped| !escaped),
            b'{' => self.nested(b'}', true)?,
            b'[' => self.nested(b']', false)?,
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return None,
        }
        Some(false)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// Skip an object (`is_object`) or array whose opening bracket is at the cursor.
    fn nested(&mut self, close: u8, is_object: bool) -> Option<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        self.i += 1;
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            self.depth -= 1;
            return Some(());
        }
        loop {
            if is_object {
                if self.peek()? != b'"' {
                    return None;
                }
                self.string()?;
                self.ws();
                if self.peek()? != b':' {
                    return None;
                }
                self.i += 1;
                self.ws();
            }
            self.value()?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                c if c == close => {
                    self.i += 1;
                    self.depth -= 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Skip the string at the cursor (`"`); `Some(true)` when it contains escapes. Control
    /// characters are rejected and escapes checked, as serde_json does for ignored strings.
    #[inline(always)]
    fn string(&mut self) -> Option<bool> {
        if self.peek()? != b'"' {
            return None;
        }
        self.i += 1;
        let mut escaped = false;
        loop {
            // Eight bytes at a time up to the next `"`, `\` or control character.
            while let Some(chunk) = self.b.get(self.i..self.i + 8) {
                let special = special(u64::from_le_bytes(chunk.try_into().ok()?));
                if special != 0 {
                    self.i += (special.trailing_zeros() / 8) as usize;
                    break;
                }
                self.i += 8;
            }
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                0..0x20 => return None,
                _ => self.i += 1,
            }
        }
    }

    fn escape(&mut self) -> Option<()> {
        match *self.b.get(self.i + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
            b'u' => {
                let hex = self.b.get(self.i + 2..self.i + 6)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                self.i += 6;
            }
            _ => return None,
        }
        Some(())
    }

    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        // serde_json rejects a digit after a leading zero ("01"): so does the caller, which
        // expects a separator here.
        Some(())
    }

    #[inline]
    fn digits(&mut self) {
        // Eight bytes at a time: payloads are full of long numbers (timings, counters), and a
        // loop per digit paid an epoch check per digit in wasm. A byte is a digit when its
        // high nibble is 3 and stays 3 after adding 6 (0x30..=0x39). Adding 6 carries into
        // the next byte only from a byte >= 0xFA, which is itself flagged, so the lowest
        // flagged byte is exactly the first non-digit.
        const NIBBLES: u64 = 0xF0F0_F0F0_F0F0_F0F0;
        const THREES: u64 = ONES * 0x30;
        while let Some(chunk) = self.b.get(self.i..).and_then(|s| s.first_chunk::<8>()) {
            let w = u64::from_le_bytes(*chunk);
            let other = ((w & NIBBLES) ^ THREES) | ((w.wrapping_add(ONES * 6) & NIBBLES) ^ THREES);
            if other != 0 {
                self.i += (other.trailing_zeros() / 8) as usize;
                return;
            }
            self.i += 8;
        }
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What serde_json makes of `text` (the reference).
    fn reference(text: &str) -> Option<Members<'_>> {
        serde_json::from_str(text).ok()
    }

    /// Whether serde_json accepts `text` as an object it skips (the host's attributes check).
    fn ignored(text: &str) -> bool {
        text.trim_start().starts_with('{')
            && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    }

    #[test]
    fn reads_members_in_order_with_raw_values() {
        let text = " {\"a\" : 1, \"b\":{\"x\":[1,2,{\"y\":null}]},\"a\":\"t\\\"x\",\"k\\u00e9\":-0.5e+3 }\n";
        let m = object(text).unwrap();
        let got: Vec<_> = m.0.iter().map(|(k, v)| (k.as_ref(), v.get())).collect();
        assert_eq!(
            got,
            [
                ("a", "1"),
                ("b", "{\"x\":[1,2,{\"y\":null}]}"),
                ("a", "\"t\\\"x\""),
                ("ké", "-0.5e+3"),
            ]
        );
        assert_eq!(Some(m), reference(text));
        assert_eq!(object("{}"), Some(Members::default()));
    }

    #[test]
    fn rejects_what_serde_json_rejects() {
        for bad in [
            "",
            "[]",
            "1",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":1e}",
            "{\"a\":-}",
            "{\"a\":.5}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "{\"a\":\"x\ty\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12G4\"}",
            "{\"a\":[1,]}",
            "{\"a\":[1 2]}",
            "{\"a\":{\"b\" 1}}",
            "{\"a\":1} x",
            "{\"a\":1}}",
            "{'a':1}",
            "{\"a\":1 \"b\":2}",
            "{\"\\ud800\":1}",
            "{\"a\":+1}",
            "{\"a\":\"unterminated}",
        ] {
            assert_eq!(object(bad), None, "{bad:?}");
            assert!(object_with_children(bad).is_none(), "{bad:?}");
            // Ignored strings are not checked for lone surrogates (keys read as text are).
            assert_eq!(is_object(bad), ignored(bad), "{bad:?}");
            assert!(reference(bad).is_none(), "serde_json accepts {bad:?}");
        }
        // Valid, but left to serde_json: nesting deeper than the scanner goes.
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(120), "]".repeat(120));
        assert_eq!(object(&deep), None);
        assert!(reference(&deep).is_some());
    }

    #[test]
    fn long_numbers_end_where_serde_json_ends_them() {
        // Digit runs around the eight-byte steps, followed by everything that can follow.
        for n in 1..=19 {
            let digits: String = (0..n).map(|i| char::from(b'1' + (i % 9) as u8)).collect();
            for next in [
                "", ".5", "e7", "E+12", ",\"b\":2", " ", "x", ":", "/", "é", "0", "9", "-", "]",
            ] {
                for number in [digits.clone(), format!("-{digits}"), format!("0.{digits}")] {
                    let text = format!("{{\"a\":{number}{next}}}");
                    assert_eq!(object(&text), reference(&text), "{text}");
                    assert_eq!(is_object(&text), ignored(&text), "{text}");
                }
            }
        }
    }

    /// A JSON value of bounded depth, written with varied whitespace, escapes and numbers.
    fn value() -> impl Strategy<Value = String> {
        let string = "([a-zé✓ /]|\\\\[nrtbf\"/\\\\]|\\\\u00[0-7][0-9a-f]){0,12}"
            .prop_map(|s| format!("\"{s}\""));
        // Up to 19 digits per run, so runs cross the eight-byte steps of `digits()`.
        let number = "-?(0|[1-9][0-9]{0,18})(\\.[0-9]{1,12})?([eE][+-]?[0-9]{1,3})?";
        let leaf = prop_oneof![
            string.clone(),
            number.prop_map(|s| s),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("null".to_string()),
        ];
        leaf.prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|v| format!("[{}]", v.join(" ,\n"))),
                prop::collection::vec(("[a-z]{0,3}", inner), 0..5).prop_map(|v| {
                    let members: Vec<_> =
                        v.iter().map(|(k, v)| format!("\"{k}\"\t: {v}")).collect();
                    format!("{{ {} }}", members.join(","))
                }),
            ]
        })
    }

    fn document() -> impl Strategy<Value = String> {
        prop::collection::vec(("[a-zA-Z_]{0,6}|k\\\\u00e9", value()), 0..8).prop_map(|v| {
            let members: Vec<_> = v.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!(" {{{}}} ", members.join(", "))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Every valid document reads exactly as serde_json reads it.
        #[test]
        fn valid_documents_read_as_serde_json_reads_them(doc in document()) {
            let want = reference(&doc);
            prop_assert!(want.is_some(), "generator made invalid JSON: {doc}");
            prop_assert!(is_object(&doc));
            let (members, children) = object_with_children(&doc).unwrap();
            for (i, (_, v)) in members.0.iter().enumerate() {
                let child = children.iter().find(|(j, _)| *j == i).map(|(_, m)| m);
                let want = reference(v.get());
                prop_assert_eq!(child, want.as_ref());
                // The scanner's note that a string has no escapes is what `as_str` trusts.
                let unescaped = serde_json::from_str::<String>(v.get()).ok();
                prop_assert_eq!(crate::json::as_str(*v).map(|s| s.into_owned()), unescaped);
            }
            prop_assert_eq!(object(&doc), want);
        }

        /// Damaged documents: whatever the scanner accepts, serde_json accepts the same way.
        #[test]
        fn damaged_documents_are_never_accepted_wrongly(
            doc in document(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0..3u8, prop::sample::select(
                vec!['"', '\\', ',', ':', '{', '}', '[', ']', '0', '-', '.', 'e', 'u', ' ', '\n', '\u{1}', 'a', 't'])), 1..4),
        ) {
            let mut chars: Vec<char> = doc.chars().collect();
            for (at, op, c) in edits {
                if chars.is_empty() {
                    break;
                }
                let i = at.index(chars.len());
                match op {
                    0 => { chars.remove(i); }
                    1 => chars.insert(i, c),
                    _ => chars[i] = c,
                }
            }
            let text: String = chars.into_iter().collect();
            if let Some(got) = object(&text) {
                prop_assert_eq!(Some(got), reference(&text), "{}", text);
            }
            if object_with_children(&text).is_some() {
                prop_assert!(reference(&text).is_some(), "{}", text);
            }
            if is_object(&text) {
                prop_assert!(ignored(&text), "{}", text);
            }
        }
    }
}
