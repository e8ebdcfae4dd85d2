//! The file snapshot: a file's full current information as an ordered list of
//! `(field, value)` string pairs, like the `<result>` document of `media.getFileInfo`.
//!
//! Stored compactly — one text buffer and one offset table — because there are millions of
//! them in the store and the dispatcher's cache. Field names are XML names (without `:`, so
//! the rendered document is also namespace-well-formed) and unique within a snapshot; values
//! are any UTF-8, possibly empty.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a snapshot is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// A field name is not an XML name.
    #[error("field name {0:?} is not an XML name (letters, digits, _ . -, not starting with a digit, . or -)")]
    BadFieldName(String),
    /// A field name appears twice.
    #[error("field {0:?} appears more than once")]
    DuplicateField(String),
    /// Too many fields.
    #[error("a snapshot has at most {max} fields")]
    TooManyFields {
        /// The limit.
        max: usize,
    },
    /// Stored parts that do not describe a snapshot (see [`Snapshot::from_stored_parts`]).
    #[error("the stored snapshot's offset table does not fit its text")]
    Malformed,
    /// The text of the snapshot is too large.
    #[error("a snapshot holds at most {max} bytes of names and values")]
    TooLarge {
        /// The limit.
        max: usize,
    },
}

/// A file's full state: ordered `(field, value)` pairs.
///
/// Invariant: `ends` has an even length; pair `i` is the name
/// `text[ends[2i-1]..ends[2i]]` (starting at 0 for `i = 0`) and the value that follows it up
/// to `ends[2i+1]`; names are valid and unique (checked by [`SnapshotBuilder::finish`]).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    text: Box<str>,
    ends: Box<[u32]>,
}

impl Snapshot {
    /// Most fields one snapshot may hold.
    pub const MAX_FIELDS: usize = 4096;
    /// Most bytes of names and values one snapshot may hold.
    pub const MAX_BYTES: usize = 4 << 20;

    /// Starts an empty builder.
    pub fn builder() -> SnapshotBuilder {
        SnapshotBuilder::default()
    }

    /// Builds a snapshot from pairs, validating names and uniqueness.
    pub fn from_pairs<'a, I>(pairs: I) -> Result<Snapshot, SnapshotError>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut b = Snapshot::builder();
        for (n, v) in pairs {
            b.push(n, v)?;
        }
        b.finish()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.view().len()
    }

    /// True if there are no fields.
    pub fn is_empty(&self) -> bool {
        self.view().is_empty()
    }

    /// The fields in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.view().iter()
    }

    fn pair(&self, i: usize) -> (&str, &str) {
        let start = if i == 0 {
            0
        } else {
            self.ends[2 * i - 1] as usize
        };
        let mid = self.ends[2 * i] as usize;
        let end = self.ends[2 * i + 1] as usize;
        (&self.text[start..mid], &self.text[mid..end])
    }
    /// The first name that appears twice, if any. Ingest checks every snapshot and replay
    /// every one it renders, so this is an open-addressing table of field indexes keyed by
    /// an FNV-1a hash of the name: one pass, one small allocation, no sorting (sorting ~50
    /// names was a tenth of a replay's verifying time).
    fn duplicate_name(&self) -> Option<&str> {
        let n = self.len();
        if n < 2 {
            return None;
        }
        let size = (2 * n).next_power_of_two();
        let mask = size - 1;
        let mut slots = vec![u32::MAX; size];
        for i in 0..n {
            let name = self.pair(i).0;
            let mut h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            }) as usize
                & mask;
            loop {
                match slots[h] {
                    u32::MAX => {
                        slots[h] = i as u32;
                        break;
                    }
                    j if self.pair(j as usize).0 == name => return Some(name),
                    _ => h = (h + 1) & mask,
                }
            }
        }
        None
    }

    /// The snapshot's storage: all names and values back to back, and the offset table
    /// (see the type's invariant). What the store writes, so that reading it back is a
    /// copy and a structure check rather than a parse.
    pub fn as_parts(&self) -> (&str, &[u32]) {
        (&self.text, &self.ends)
    }

    /// Rebuilds a snapshot from [`as_parts`](Self::as_parts) of one that existed.
    ///
    /// For bytes the store wrote and whose checksum held: the structure is checked — an even
    /// number of offsets, non-decreasing, on character boundaries, ending at the text's end,
    /// within the limits — so that no input can make a snapshot index out of bounds, and
    /// every name must be an XML name, which the `xml` format writes unchecked. Uniqueness
    /// is not checked again: it was checked when the snapshot was first built, and the
    /// checksum shows these are its bytes (the hash table for it was the larger part of
    /// decoding a seed-sized body).
    pub fn from_stored_parts(text: &str, ends: &[u32]) -> Result<Snapshot, SnapshotError> {
        SnapshotView::from_stored_parts(text, ends).map(|view| view.to_snapshot())
    }

    /// The snapshot's fields, borrowed, for what reads a snapshot or a stored body alike
    /// ([`crate::render`]).
    pub fn view(&self) -> SnapshotView<'_> {
        SnapshotView {
            text: &self.text,
            ends: &self.ends,
        }
    }

    /// The value of field `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.view().get(name)
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.view().fmt(f)
    }
}

/// A snapshot's fields, borrowed: a [`Snapshot`]'s ([`Snapshot::view`]), or a stored body's
/// where it was read ([`SnapshotView::from_stored_parts`]), so that a reader can render a
/// body without copying it into a `Snapshot` first — replay renders every body it checks.
/// The same invariant as [`Snapshot`]'s holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SnapshotView<'a> {
    text: &'a str,
    ends: &'a [u32],
}

impl<'a> SnapshotView<'a> {
    /// Checks parts a store kept, as [`Snapshot::from_stored_parts`] does (this is that
    /// check), and borrows them.
    pub fn from_stored_parts(text: &'a str, ends: &'a [u32]) -> Result<Self, SnapshotError> {
        if ends.len() / 2 > Snapshot::MAX_FIELDS {
            return Err(SnapshotError::TooManyFields {
                max: Snapshot::MAX_FIELDS,
            });
        }
        if text.len() > Snapshot::MAX_BYTES {
            return Err(SnapshotError::TooLarge {
                max: Snapshot::MAX_BYTES,
            });
        }
        let fits = ends.len().is_multiple_of(2)
            && ends
                .last()
                .map_or(text.is_empty(), |l| *l as usize == text.len());
        if !fits {
            return Err(SnapshotError::Malformed);
        }
        // One pass over the table, checking each pair's offsets and then its name: replay
        // checks every snapshot it renders, and a second pass for the names cost a fifth
        // of the check.
        let mut start = 0;
        for pair in ends.chunks_exact(2) {
            let (mid, end) = (pair[0] as usize, pair[1] as usize);
            let ordered = start <= mid && mid <= end;
            if !(ordered && text.is_char_boundary(mid) && text.is_char_boundary(end)) {
                return Err(SnapshotError::Malformed);
            }
            // Most names are ASCII and decided by the byte table right here; the rest take
            // the full check.
            if !is_ascii_xml_name(&text.as_bytes()[start..mid]) {
                let name = &text[start..mid];
                if !is_xml_name(name) {
                    return Err(SnapshotError::BadFieldName(name.to_owned()));
                }
            }
            start = end;
        }
        Ok(SnapshotView { text, ends })
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    /// True if there are no fields.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The fields in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a str)> + 'a {
        // One pass over the offset table, carrying each pair's start (renders call this for
        // every delivery and replay for every digest it checks).
        let (text, mut start) = (self.text, 0);
        self.ends.chunks_exact(2).map(move |pair| {
            let (mid, end) = (pair[0] as usize, pair[1] as usize);
            let fields = (&text[start..mid], &text[mid..end]);
            start = end;
            fields
        })
    }

    /// The value of field `name`, if present.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The storage (see [`Snapshot::as_parts`]).
    pub fn as_parts(&self) -> (&'a str, &'a [u32]) {
        (self.text, self.ends)
    }

    /// The same fields, owned.
    pub fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            text: self.text.into(),
            ends: self.ends.into(),
        }
    }
}

impl<'a> From<&'a Snapshot> for SnapshotView<'a> {
    fn from(snapshot: &'a Snapshot) -> SnapshotView<'a> {
        snapshot.view()
    }
}

impl fmt::Debug for SnapshotView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Accumulates fields for a [`Snapshot`].
#[derive(Default, Debug)]
pub struct SnapshotBuilder {
    text: String,
    ends: Vec<u32>,
}

impl SnapshotBuilder {
    /// Appends one field. Names are checked here; uniqueness in [`finish`](Self::finish).
    pub fn push(&mut self, name: &str, value: &str) -> Result<&mut Self, SnapshotError> {
        if !is_xml_name(name) {
            return Err(SnapshotError::BadFieldName(name.to_owned()));
        }
        if self.ends.len() / 2 >= Snapshot::MAX_FIELDS {
            return Err(SnapshotError::TooManyFields {
                max: Snapshot::MAX_FIELDS,
            });
        }
        if self.text.len() + name.len() + value.len() > Snapshot::MAX_BYTES {
            return Err(SnapshotError::TooLarge {
                max: Snapshot::MAX_BYTES,
            });
        }
        self.text.push_str(name);
        // Lossless: MAX_BYTES is far below u32::MAX.
        self.ends.push(self.text.len() as u32);
        self.text.push_str(value);
        self.ends.push(self.text.len() as u32);
        Ok(self)
    }

    /// Makes room for `fields` more fields holding `bytes` more bytes of names and values.
    pub fn reserve(&mut self, fields: usize, bytes: usize) {
        self.ends.reserve(2 * fields);
        self.text.reserve(bytes);
    }

    /// Checks that names are unique and freezes the snapshot.
    pub fn finish(self) -> Result<Snapshot, SnapshotError> {
        let snapshot = Snapshot {
            text: self.text.into_boxed_str(),
            ends: self.ends.into_boxed_slice(),
        };
        if let Some(name) = snapshot.duplicate_name() {
            return Err(SnapshotError::DuplicateField(name.to_owned()));
        }
        Ok(snapshot)
    }
}

/// True if `s` is an XML 1.0 (5th edition) `Name` without `:`.
///
/// Colons are excluded so that a rendered `<result>` is well-formed for namespace-aware
/// parsers too (an undeclared prefix is an error there).
pub fn is_xml_name(s: &str) -> bool {
    // Field names are ASCII nearly always, and replay checks every name of every snapshot it
    // renders: one table lookup per byte decides those; anything else takes the char path.
    if is_ascii_xml_name(s.as_bytes()) {
        return true;
    }
    if s.is_ascii() {
        return false;
    }
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if is_name_start(c) => chars.all(is_name_char),
        _ => false,
    }
}

/// True if `bytes` are an ASCII XML name; false for any other name, ASCII or not.
#[inline(always)]
fn is_ascii_xml_name(bytes: &[u8]) -> bool {
    match bytes.split_first() {
        Some((&first, rest)) => {
            NAME_BYTES[usize::from(first)] & NAME_START != 0
                && rest
                    .iter()
                    .all(|&b| NAME_BYTES[usize::from(b)] & NAME_CHAR != 0)
        }
        None => false,
    }
}

/// [`NAME_BYTES`] flag: the ASCII byte may start an XML name.
const NAME_START: u8 = 1;
/// [`NAME_BYTES`] flag: the ASCII byte may follow the first in an XML name.
const NAME_CHAR: u8 = 2;

/// For each byte, whether it is an ASCII name start and name character; `0` for every
/// non-ASCII byte, which sends the name to the `char` path.
const NAME_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8 as char;
        if is_name_start(c) {
            table[b] |= NAME_START;
        }
        if is_name_char(c) {
            table[b] |= NAME_CHAR;
        }
        b += 1;
    }
    table
};

const fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

const fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// Serialized as a map in field order (a JSON object whose key order is the field order).
impl Serialize for Snapshot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (n, v) in self.iter() {
            m.serialize_entry(n, v)?;
        }
        m.end()
    }
}

/// Deserialized from a map, keeping the document's key order (serde_json's own `Map` would
/// sort it), rejecting duplicate keys and invalid names.
impl<'de> Deserialize<'de> for Snapshot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Snapshot;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Snapshot, A::Error> {
                let mut b = Snapshot::builder();
                // Names and values of a seed-sized snapshot average about 16 bytes. JSON
                // gives no size hint: room for a seed-sized one (52 fields, 824 bytes) saves
                // the four or five regrowths of building it from empty.
                let n = map.size_hint().unwrap_or(64).min(Snapshot::MAX_FIELDS);
                b.reserve(n, n * 16);
                while let Some((Text(k), Text(v))) = map.next_entry::<Text<'de>, Text<'de>>()? {
                    b.push(&k, &v).map_err(serde::de::Error::custom)?;
                }
                b.finish().map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_map(V)
    }
}

/// A string that borrows from the input when the format allows it (bincode from the
/// store does; JSON with escapes does not), so decoding a snapshot does not allocate a
/// string per name and value. serde's own `Cow<str>` always allocates.
struct Text<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Borrowed(s)))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_values() {
        let s = Snapshot::from_pairs([
            ("id", "556114"),
            ("message", ""),
            ("user_firstname", "エヴァート"),
        ])
        .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![
                ("id", "556114"),
                ("message", ""),
                ("user_firstname", "エヴァート")
            ]
        );
        assert_eq!(s.get("message"), Some(""));
        assert_eq!(s.get("nope"), None);
    }

    #[test]
    fn finds_a_duplicate_wherever_it_is() {
        // Every pair of positions in snapshots of 2..=70 fields (the table grows at powers
        // of two, so sizes around them matter), plus the same names without a duplicate.
        for n in 2..=70usize {
            let names: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
            let unique = Snapshot::from_pairs(names.iter().map(|m| (m.as_str(), "v")));
            assert!(unique.is_ok(), "{n} distinct names");
            for (a, b) in [(0, n - 1), (n / 2, n - 1), (0, 1), (n / 3, n / 3 + 1)] {
                if a == b {
                    continue;
                }
                let mut dup = names.clone();
                dup[b] = dup[a].clone();
                assert_eq!(
                    Snapshot::from_pairs(dup.iter().map(|m| (m.as_str(), "v"))),
                    Err(SnapshotError::DuplicateField(dup[a].clone())),
                    "{n} fields, {a} repeated at {b}"
                );
            }
        }
    }

    #[test]
    fn rejects_bad_names_and_duplicates() {
        assert_eq!(
            Snapshot::from_pairs([("1abc", "")]),
            Err(SnapshotError::BadFieldName("1abc".into()))
        );
        assert!(Snapshot::from_pairs([("a:b", "")]).is_err());
        assert!(Snapshot::from_pairs([("", "")]).is_err());
        assert_eq!(
            Snapshot::from_pairs([("a", "1"), ("b", "2"), ("a", "3")]),
            Err(SnapshotError::DuplicateField("a".into()))
        );
        assert!(is_xml_name("publicUrl"));
        assert!(is_xml_name("user_name"));
        assert!(is_xml_name("名前"));
    }

    /// The byte table decides exactly what the `char` rules decide, for every ASCII name of
    /// up to two bytes, and hands mixed names to them.
    #[test]
    fn the_name_table_agrees_with_the_char_rules() {
        let by_chars = |s: &str| {
            let mut chars = s.chars();
            chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
        };
        for a in 0u8..128 {
            let one = (a as char).to_string();
            assert_eq!(is_xml_name(&one), by_chars(&one), "{one:?}");
            for b in 0u8..128 {
                let two = format!("{}{}", a as char, b as char);
                assert_eq!(is_xml_name(&two), by_chars(&two), "{two:?}");
            }
        }
        for mixed in ["a·b", "é", "aé", "a b", "1a", "-a", "a\u{300}", "·a"] {
            assert_eq!(is_xml_name(mixed), by_chars(mixed), "{mixed:?}");
        }
        assert!(!is_xml_name(""));
    }

    #[test]
    fn stored_parts_round_trip_and_bad_tables_are_refused() {
        let s = Snapshot::from_pairs([("id", "556114"), ("message", ""), ("名", "エ")]).unwrap();
        let (text, ends) = s.as_parts();
        assert_eq!(Snapshot::from_stored_parts(text, ends), Ok(s.clone()));
        assert_eq!(
            Snapshot::from_stored_parts("", &[]),
            Ok(Snapshot::default())
        );
        let bad: [&[u32]; 5] = [
            &ends[..ends.len() - 1],      // odd
            &[2, 8, 15, 15, 17, 19],      // ends short of the text
            &[2, 8, 9, 9, 12, 30],        // past the text
            &[2, 8, 1, 15, 18, ends[5]],  // decreasing
            &[2, 8, 15, 15, 16, ends[5]], // inside a character
        ];
        for ends in bad {
            assert_eq!(
                Snapshot::from_stored_parts(text, ends),
                Err(SnapshotError::Malformed),
                "{ends:?}"
            );
        }
        // A table that fits its text but makes "556114" a name: refused, since the xml
        // format writes names as they are.
        assert_eq!(
            Snapshot::from_stored_parts(text, &[1, 2, 8, 8, 15, 15, 18, ends[5]]),
            Err(SnapshotError::BadFieldName("556114".into()))
        );
    }

    #[test]
    fn json_keeps_document_order() {
        let s: Snapshot = serde_json::from_str(r#"{"z":"1","a":"2","m":""}"#).unwrap();
        assert_eq!(
            s.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            vec!["z", "a", "m"]
        );
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"z":"1","a":"2","m":""}"#
        );
        let dup = serde_json::from_str::<Snapshot>(r#"{"a":"1","a":"2"}"#).unwrap_err();
        assert!(dup.to_string().contains("more than once"), "{dup}");
        let num = serde_json::from_str::<Snapshot>(r#"{"a":1}"#).unwrap_err();
        assert!(num.to_string().contains("string"), "{num}");
    }
}
