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

use super::Projected;
use crate::snapshot::is_xml_name;

/// The media type of the `xml` format.
pub(crate) const CONTENT_TYPE: &str = "application/xml";

const HEAD: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<result>\n";
const TAIL: &[u8] = b"</result>\n";
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Renders the projected fields as a `<result>` document.
pub(crate) fn render(fields: Projected<'_>) -> Vec<u8> {
    if let Some(snapshot) = fields.whole() {
        // Every field, under its own name: names are XML names by the snapshot's invariant.
        // `  <n>` + `</n>\n` is 2·len(n) + 8 bytes around the value; twice the text bounds
        // the names, and escaping grows a value only when it has markup.
        let (text, _) = snapshot.as_parts();
        let capacity = HEAD.len() + 2 * text.len() + 8 * snapshot.len() + TAIL.len();
        return document(snapshot.iter(), capacity, false);
    }
    let estimate: usize = fields
        .pairs()
        .map(|(name, value)| 2 * name.len() + value.len() + 8)
        .sum();
    document(fields.pairs(), HEAD.len() + estimate + TAIL.len(), true)
}

fn document<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    capacity: usize,
    check_names: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(HEAD);
    for (name, value) in pairs {
        // Names cannot be escaped. Snapshot names and the output names of a validated xml
        // callback are XML names already; this only keeps a hand-built `Callback` from
        // producing an ill-formed document.
        if check_names && !is_xml_name(name) {
            continue;
        }
        out.extend_from_slice(b"  <");
        out.extend_from_slice(name.as_bytes());
        out.push(b'>');
        escape_into(&mut out, value);
        out.extend_from_slice(b"</");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b">\n");
    }
    out.extend_from_slice(TAIL);
    out
}

/// The bytes the escaper must look at: the five markup characters, CR, the C0 controls but
/// tab and LF, and 0xEF (which starts U+FFFE and U+FFFF, among others). Every other byte is
/// copied as it is, so a value is scanned with one table lookup a byte.
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

/// Appends `text` escaped as element content, per the rule in the module docs.
fn escape_into(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    // Copies unescaped runs in one piece: most values need no escaping at all.
    let mut run_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !ATTENTION[bytes[i] as usize] {
            i += 1;
            continue;
        }
        let (replacement, width): (&[u8], usize) = match bytes[i] {
            b'<' => (b"&lt;", 1),
            b'>' => (b"&gt;", 1),
            b'&' => (b"&amp;", 1),
            b'\'' => (b"&apos;", 1),
            b'"' => (b"&quot;", 1),
            b'\r' => (b"&#13;", 1),
            _ => match forbidden_width(bytes, i) {
                Some(width) => (REPLACEMENT, width),
                None => {
                    i += 1;
                    continue;
                }
            },
        };
        out.extend_from_slice(&bytes[run_start..i]);
        out.extend_from_slice(replacement);
        i += width;
        run_start = i;
    }
    out.extend_from_slice(&bytes[run_start..]);
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
}
