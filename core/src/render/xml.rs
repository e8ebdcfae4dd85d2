//! The `xml` format: the getFileInfo `<result>` document of seed 001, as Filemobile sends it —
//! one child element per field, two-space indented, one per line.
//!
//! The output is always a well-formed XML 1.0 document, whatever the values hold. The rule:
//! `<`, `>`, `&`, `'` and `"` become the predefined entities; carriage return becomes `&#13;`
//! (a parser turns a raw CR or CRLF into LF, so only the reference brings a `\r` back);
//! tab and line feed stay as they are; every character XML 1.0 does not allow in a document
//! (U+0000–U+0008, U+000B, U+000C, U+000E–U+001F, U+FFFE, U+FFFF — surrogates cannot occur in
//! a Rust string) becomes U+FFFD REPLACEMENT CHARACTER, since no escape can carry them.
//! [`crate::ingest`] applies the same replacement, so what it reads back is what was meant.

use std::ops::Range;

use super::Projected;
use crate::snapshot::{is_xml_name, SnapshotView};

/// The media type of the `xml` format.
pub(crate) const CONTENT_TYPE: &str = "application/xml";

const HEAD: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<result>\n";
const TAIL: &[u8] = b"</result>\n";
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Renders the projected fields as a `<result>` document.
pub(crate) fn render(fields: Projected<'_>) -> Vec<u8> {
    if let Some(snapshot) = fields.whole() {
        return whole(snapshot);
    }
    let estimate: usize = fields
        .pairs()
        .map(|(name, value)| 2 * name.len() + value.len() + 8)
        .sum();
    let mut out = Vec::with_capacity(HEAD.len() + estimate + TAIL.len());
    out.extend_from_slice(HEAD);
    for (name, value) in fields.pairs() {
        // Names cannot be escaped. The output names of a validated xml callback are XML
        // names already; this only keeps a hand-built `Callback` from producing an
        // ill-formed document.
        if !is_xml_name(name) {
            continue;
        }
        let (name, value) = (name.as_bytes(), value.as_bytes());
        element(&mut out, name, 0..name.len(), value, 0..value.len());
    }
    out.extend_from_slice(TAIL);
    out
}

/// Every field of `snapshot`, under its own name: names are XML names by the snapshot's
/// invariant. Names and values are copied out of the snapshot's one text (see [`put`]);
/// replay renders every snapshot it checks this way, and the dispatcher every attempt.
fn whole(snapshot: SnapshotView<'_>) -> Vec<u8> {
    let (text, ends) = snapshot.as_parts();
    let text = text.as_bytes();
    // `  <n>` + `</n>\n` is 2·len(n) + 8 bytes around the value; twice the text bounds the
    // names, and escaping grows a value only when it has markup. `put` may write a block
    // past the end before cutting it back.
    let capacity = HEAD.len() + 2 * text.len() + 8 * snapshot.len() + TAIL.len() + BLOCK;
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(HEAD);
    let mut start = 0;
    for pair in ends.chunks_exact(2) {
        let (mid, end) = (pair[0] as usize, pair[1] as usize);
        element(&mut out, text, start..mid, text, mid..end);
        start = end;
    }
    out.extend_from_slice(TAIL);
    out
}

/// Appends one field's line, `  <name>value</name>`: the name is `names[name]` (an XML
/// name), the value `values[value]`, escaped.
fn element(
    out: &mut Vec<u8>,
    names: &[u8],
    name: Range<usize>,
    values: &[u8],
    value: Range<usize>,
) {
    out.extend_from_slice(b"  <");
    put(out, names, name.start, name.end);
    out.push(b'>');
    escape_into(out, values, value.start, value.end);
    out.extend_from_slice(b"</");
    put(out, names, name.start, name.end);
    out.extend_from_slice(b">\n");
}

/// The largest block [`put`] copies whole.
const BLOCK: usize = 32;

/// Appends `src[start..end]`. A short run — most names and values are — is copied as a
/// fixed 16- or 32-byte block of `src` and then cut back to its length, when `src` holds
/// that many bytes from `start`: a fixed-size copy is a pair of vector moves, a copy of
/// unknown length a call into `memcpy`, and a seed-shaped document makes ~150 copies.
#[inline(always)]
fn put(out: &mut Vec<u8>, src: &[u8], start: usize, end: usize) {
    let len = end - start;
    if len <= 16 && start + 16 <= src.len() {
        out.extend_from_slice(&src[start..start + 16]);
        out.truncate(out.len() - (16 - len));
    } else if len <= BLOCK && start + BLOCK <= src.len() {
        out.extend_from_slice(&src[start..start + BLOCK]);
        out.truncate(out.len() - (BLOCK - len));
    } else {
        out.extend_from_slice(&src[start..end]);
    }
}

/// The bytes the escaper must look at: the five markup characters, CR, the C0 controls but
/// tab and LF, and 0xEF (which starts U+FFFE and U+FFFF, among others). Every other byte is
/// copied as it is.
const ATTENTION: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b != b'\t' as usize && b != b'\n' as usize;
        b += 1;
    }
    table[b'<' as usize] = true;
    table[b'>' as usize] = true;
    table[b'&' as usize] = true;
    table[b'\'' as usize] = true;
    table[b'"' as usize] = true;
    table[0xEF] = true;
    table
};

/// Appends `src[start..end]` (a whole value: it starts and ends on char boundaries)
/// escaped as element content, per the rule in the module docs.
fn escape_into(out: &mut Vec<u8>, src: &[u8], start: usize, end: usize) {
    let value = &src[..end];
    // Copies unescaped runs in one piece: most values need no escaping at all.
    let mut run_start = start;
    let mut i = start;
    while let Some(at) = next_attention(value, i) {
        let (replacement, width): (&[u8], usize) = match value[at] {
            b'<' => (b"&lt;", 1),
            b'>' => (b"&gt;", 1),
            b'&' => (b"&amp;", 1),
            b'\'' => (b"&apos;", 1),
            b'"' => (b"&quot;", 1),
            b'\r' => (b"&#13;", 1),
            _ => match forbidden_width(value, at) {
                Some(width) => (REPLACEMENT, width),
                None => {
                    i = at + 1;
                    continue;
                }
            },
        };
        put(out, src, run_start, at);
        out.extend_from_slice(replacement);
        i = at + width;
        run_start = i;
    }
    put(out, src, run_start, end);
}

/// The first byte at or after `from` that [`ATTENTION`] marks. Eight bytes are tested at
/// once ([`word_may_need_attention`]); only a word that may hold one is looked at a byte at
/// a time.
fn next_attention(bytes: &[u8], mut from: usize) -> Option<usize> {
    while let Some(word) = bytes.get(from..from + 8) {
        let packed = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        if word_may_need_attention(packed) {
            if let Some(p) = word.iter().position(|&b| ATTENTION[usize::from(b)]) {
                return Some(from + p);
            }
        }
        from += 8;
    }
    bytes[from..]
        .iter()
        .position(|&b| ATTENTION[usize::from(b)])
        .map(|p| from + p)
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// True if one of the eight bytes of `word` is below 0x20 or one of `<>&'"` and 0xEF: a
/// superset of [`ATTENTION`] (tab and LF are below 0x20 too). The tests are the classic
/// "has a byte less than n" and "has a zero byte" bit tricks, which are exact as to
/// *whether* such a byte exists.
fn word_may_need_attention(word: u64) -> bool {
    let below = |n: u64| word.wrapping_sub(ONES * n) & !word & HIGHS;
    let equal = |b: u8| {
        let x = word ^ (ONES * u64::from(b));
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    (below(0x20)
        | equal(b'<')
        | equal(b'>')
        | equal(b'&')
        | equal(b'\'')
        | equal(b'"')
        | equal(0xEF))
        != 0
}

/// If a character XML 1.0 forbids starts at `bytes[i]` (of valid UTF-8), its width in bytes.
/// The byte-level form of [`is_xml_char`], for the escaper and the ingest decoder, which scan
/// bytes so that unchanged runs are copied in one piece.
pub(crate) fn forbidden_width(bytes: &[u8], i: usize) -> Option<usize> {
    match bytes[i] {
        b'\t' | b'\n' | b'\r' => None,
        0x00..=0x1F => Some(1),
        // U+FFFE and U+FFFF are EF BF BE and EF BF BF; 0xEF always leads a 3-byte char.
        0xEF if bytes.get(i + 1) == Some(&0xBF)
            && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) =>
        {
            Some(3)
        }
        _ => None,
    }
}

/// True if XML 1.0 allows `c` in a document (the `Char` production, minus the surrogates a
/// `char` cannot hold).
pub(crate) fn is_xml_char(c: char) -> bool {
    !matches!(c, '\u{0}'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}')
}

#[cfg(test)]
mod tests {
    use quick_xml::events::Event;
    use quick_xml::Reader;

    use super::super::fixtures::{seed_001_snapshot, SEED_001_FIELDS};
    use super::*;
    use crate::config::Callback;
    use crate::snapshot::Snapshot;
    use proptest::prelude::*;

    fn render_all(snapshot: &Snapshot) -> Vec<u8> {
        let c = Callback::from_json(r#"{"url":"http://x.org/"}"#).unwrap();
        super::super::render(snapshot, &c).bytes
    }

    /// Reads a `<result>` document back with quick-xml, independently of [`crate::ingest`].
    fn read_back(doc: &[u8]) -> Vec<(String, String)> {
        let mut reader = Reader::from_reader(doc);
        let mut fields = Vec::new();
        let mut open: Option<(String, String)> = None;
        let mut depth = 0;
        loop {
            match reader.read_event().expect("well-formed") {
                Event::Decl(_) => {}
                Event::Start(e) => {
                    depth += 1;
                    let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                    match depth {
                        1 => assert_eq!(name, "result"),
                        2 => open = Some((name, String::new())),
                        _ => panic!("nested element {name}"),
                    }
                }
                Event::Empty(e) => {
                    assert_eq!(depth, 1);
                    let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                    fields.push((name, String::new()));
                }
                Event::Text(t) => {
                    let text = t.unescape().expect("known entities only");
                    match &mut open {
                        Some((_, value)) => value.push_str(&text),
                        None => assert!(text.trim().is_empty(), "stray text {text:?}"),
                    }
                }
                Event::End(_) => {
                    depth -= 1;
                    if let Some(field) = open.take() {
                        fields.push(field);
                    }
                }
                Event::Eof => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(depth, 0);
        fields
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|&(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn seed_001_sample_renders_as_a_well_formed_document_with_every_field_in_order() {
        let doc = render_all(&seed_001_snapshot());
        assert!(std::str::from_utf8(&doc).is_ok());
        assert_eq!(read_back(&doc), owned(&SEED_001_FIELDS));
    }

    #[test]
    fn seed_001_sample_renders_exactly_like_the_seed_document() {
        let doc = String::from_utf8(render_all(&seed_001_snapshot())).unwrap();
        assert!(
            doc.starts_with(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<result>\n  <id>556114</id>\n  <status>3</status>\n  <contenttype>image/jpeg</contenttype>\n"
            ),
            "{doc}"
        );
        assert!(doc.contains("\n  <user_firstname>エヴァート</user_firstname>\n  <user_lastname>ぽつ</user_lastname>\n  <url></url>\n"));
        assert!(doc.contains("\n  <geo_latitude></geo_latitude>\n"));
        assert!(doc.ends_with("\n  <moderationdeniedid>0</moderationdeniedid>\n</result>\n"));
        assert_eq!(doc.lines().count(), 2 + SEED_001_FIELDS.len() + 1);
    }

    #[test]
    fn empty_snapshot_renders_an_empty_result() {
        assert_eq!(
            render_all(&Snapshot::default()),
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<result>\n</result>\n"
        );
    }

    #[test]
    fn markup_characters_and_carriage_returns_are_escaped() {
        let snapshot = Snapshot::from_pairs([("t", "<a href=\"x\">&'\r\n\t</a>")]).unwrap();
        let doc = String::from_utf8(render_all(&snapshot)).unwrap();
        assert!(
            doc.contains("  <t>&lt;a href=&quot;x&quot;&gt;&amp;&apos;&#13;\n\t&lt;/a&gt;</t>\n"),
            "{doc}"
        );
    }

    #[test]
    fn awkward_values_round_trip_through_an_xml_reader() {
        let values = [
            "<>&'\"",
            "line\r\nbreak\rcr\nlf\ttab",
            "  leading and trailing spaces  ",
            "emoji 😀🎬 and エヴァート",
            "]]> and <![CDATA[ not a section ]]>",
            "&amp; already escaped &#13;",
            "\u{7F}\u{85}\u{A0}\u{2028} allowed oddities",
            "\u{FFFD}",
            "",
        ];
        let pairs: Vec<(String, &str)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("f{i}"), *v))
            .collect();
        let snapshot = Snapshot::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), *v))).unwrap();
        let want: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| (n.clone(), v.to_string()))
            .collect();
        assert_eq!(read_back(&render_all(&snapshot)), want);
    }

    #[test]
    fn characters_xml_forbids_become_the_replacement_character() {
        let snapshot = Snapshot::from_pairs([
            ("nul", "a\u{0}b"),
            ("ctl", "\u{1}\u{8}\u{B}\u{C}\u{E}\u{1B}\u{1F}"),
            ("nonchars", "x\u{FFFE}y\u{FFFF}z"),
            ("neighbours", "\u{FFFD}\u{FFEF}\u{EFBF}"),
        ])
        .unwrap();
        let doc = render_all(&snapshot);
        assert_eq!(
            read_back(&doc),
            owned(&[
                ("nul", "a\u{FFFD}b"),
                (
                    "ctl",
                    "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}"
                ),
                ("nonchars", "x\u{FFFD}y\u{FFFD}z"),
                ("neighbours", "\u{FFFD}\u{FFEF}\u{EFBF}"),
            ])
        );
        assert!(String::from_utf8(doc).unwrap().chars().all(is_xml_char));
    }

    #[test]
    fn is_xml_char_follows_the_xml_1_0_char_production() {
        for c in [
            '\t',
            '\n',
            '\r',
            ' ',
            '\u{D7FF}',
            '\u{E000}',
            '\u{FFFD}',
            '\u{10000}',
            '\u{10FFFF}',
        ] {
            assert!(is_xml_char(c), "{c:?}");
        }
        for c in [
            '\u{0}', '\u{8}', '\u{B}', '\u{C}', '\u{E}', '\u{1F}', '\u{FFFE}', '\u{FFFF}',
        ] {
            assert!(!is_xml_char(c), "{c:?}");
        }
    }

    /// The module docs' rule, a char at a time: what the escaper's word-at-a-time scan and
    /// block copies must reproduce exactly.
    fn escaped_by_the_rule(value: &str) -> String {
        let mut out = String::new();
        for c in value.chars() {
            match c {
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '&' => out.push_str("&amp;"),
                '\'' => out.push_str("&apos;"),
                '"' => out.push_str("&quot;"),
                '\r' => out.push_str("&#13;"),
                c if !is_xml_char(c) => out.push('\u{FFFD}'),
                c => out.push(c),
            }
        }
        out
    }

    /// Characters the escaper treats apart (and their neighbours in UTF-8), plus any char.
    fn awkward_char() -> impl Strategy<Value = char> {
        prop_oneof![
            4 => proptest::char::range('a', 'z'),
            3 => prop::sample::select(vec![
                '<', '>', '&', '\'', '"', '\r', '\n', '\t', ' ', '\u{0}', '\u{1}', '\u{1F}',
                '\u{7F}', '\u{FFFE}', '\u{FFFF}', '\u{FFFD}', '\u{FFEF}', '\u{EFBF}',
                '\u{F000}', 'エ', '😀',
            ]),
            1 => any::<char>(),
        ]
    }

    fn awkward_value() -> impl Strategy<Value = String> {
        // Up to 80 chars: values shorter and longer than a word, a 16- and a 32-byte block.
        prop::collection::vec(awkward_char(), 0..80).prop_map(|v| v.into_iter().collect())
    }

    fn xml_name() -> impl Strategy<Value = String> {
        // Short names and names longer than a block.
        "[a-z_][a-z0-9_.-]{0,40}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The whole-snapshot fast path (block copies, word-at-a-time scan) writes exactly the
        /// document the rule describes, field by field, whatever the values and wherever a
        /// field ends relative to the end of the snapshot's text.
        #[test]
        fn whole_document_is_the_rule_applied_field_by_field(
            fields in prop::collection::btree_map(xml_name(), awkward_value(), 0..8)
        ) {
            let snapshot =
                Snapshot::from_pairs(fields.iter().map(|(n, v)| (n.as_str(), v.as_str()))).unwrap();
            let mut want = String::from_utf8(HEAD.to_vec()).unwrap();
            for (name, value) in snapshot.iter() {
                want.push_str(&format!("  <{name}>{}</{name}>\n", escaped_by_the_rule(value)));
            }
            want.push_str(std::str::from_utf8(TAIL).unwrap());
            prop_assert_eq!(String::from_utf8(render_all(&snapshot)).unwrap(), want);
        }

        /// The projected path escapes exactly as the rule says too.
        #[test]
        fn projected_values_are_escaped_by_the_rule(value in awkward_value()) {
            let snapshot = Snapshot::from_pairs([("v", value.as_str())]).unwrap();
            let c = Callback::from_json(r#"{"url":"http://x.org/","fields":["v"]}"#).unwrap();
            let doc = String::from_utf8(super::super::render(&snapshot, &c).bytes).unwrap();
            let want = format!("  <v>{}</v>\n", escaped_by_the_rule(&value));
            prop_assert!(doc.contains(&want), "{doc:?} lacks {want:?}");
        }
    }

    #[test]
    fn the_word_test_flags_exactly_the_words_with_a_byte_to_look_at() {
        let interesting = [
            0x00, 0x09, 0x0A, 0x0D, 0x1F, 0x20, b'<', b'>', b'&', b'\'', b'"', 0xEF, 0xBF, 0x80,
            0x7F, b'a',
        ];
        for &b in &interesting {
            for pos in 0..8 {
                let mut word = [b'a'; 8];
                word[pos] = b;
                let flagged = word_may_need_attention(u64::from_le_bytes(word));
                let below_space_or_marked = b < 0x20 || ATTENTION[usize::from(b)];
                assert_eq!(flagged, below_space_or_marked, "byte {b:#04x} at {pos}");
            }
        }
    }
}
