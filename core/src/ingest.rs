//! Ingest of getFileInfo `<result>` documents (seed 001): a media platform's XML body in, a
//! [`Snapshot`] out. Pure — bytes to value, no I/O.
//!
//! The input comes from outside, so the parser is strict wherever leniency could hurt and
//! liberal where real senders are sloppy but the meaning is unambiguous:
//!
//! * Strict: the body is UTF-8 (a declaration naming any other encoding is refused); there is
//!   no DTD and no markup declaration at all — internal entities are how "billion laughs" and
//!   XXE attacks work, and getFileInfo never needs them; the root is `<result>`; a field holds
//!   text only; tags match; `&` starts one of the five predefined entities or a character
//!   reference; nothing but whitespace, comments and processing instructions follows
//!   `</result>`; names, uniqueness and size obey [`Snapshot`]'s own rules.
//! * Liberal: text directly inside `<result>` between fields is ignored — seed 001's own
//!   sample has a stray `i` after `</user_lastname>`; comments and processing instructions are
//!   ignored anywhere (inside a field they split the text, which is joined back); CDATA
//!   sections count as text; attributes are ignored once they parse; whitespace may precede
//!   the XML declaration; a UTF-8 byte-order mark is skipped.
//!
//! Field text is taken verbatim — no trimming — after XML's own normalizations: a raw CRLF or
//! CR becomes LF (so only `&#13;` yields a `\r`, as the renderer writes it). A character
//! XML 1.0 does not allow, raw or referenced (`&#0;`), makes the document ill-formed and is
//! refused, naming the field: replacing it would change the platform's data unseen. (The
//! [renderer](mod@crate::render) writes such characters of a JSON-ingested value as U+FFFD, so
//! what it renders always parses.) So rendering a snapshot as `xml` and parsing it back is the
//! identity for every snapshot the renderer writes unchanged.

use quick_xml::errors::{Error as QxError, IllFormedError, SyntaxError};
use quick_xml::events::{BytesDecl, BytesStart, Event};
use quick_xml::Reader;

use crate::snapshot::{Snapshot, SnapshotError};

/// Why a body is not an acceptable `<result>` document. Offsets are byte offsets into the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// The body is not valid UTF-8.
    #[error("the body is not UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 {
        /// Where the first invalid byte is.
        offset: usize,
    },
    /// The XML declaration names an encoding other than UTF-8.
    #[error("the XML declaration says encoding {0:?}; only UTF-8 is accepted")]
    Encoding(String),
    /// A DTD (`<!DOCTYPE …>`) or a markup declaration such as `<!ENTITY …>`.
    #[error("a DTD or entity declaration at byte {offset}; DTDs are not accepted")]
    Dtd {
        /// Where it starts.
        offset: usize,
    },
    /// An XML declaration after other markup.
    #[error("an XML declaration at byte {offset}; it may only start the document")]
    MisplacedDeclaration {
        /// Where it starts.
        offset: usize,
    },
    /// There is no root element at all.
    #[error("the body has no <result> element")]
    NoRoot,
    /// The root element is not `<result>`.
    #[error("the root element is <{0}>, not <result>")]
    WrongRoot(String),
    /// Non-whitespace text or CDATA before the root element.
    #[error("text before <result> at byte {offset}")]
    TextBeforeRoot {
        /// Where it starts.
        offset: usize,
    },
    /// Something other than whitespace, comments or processing instructions after `</result>`.
    #[error("content after </result> at byte {offset}")]
    TrailingContent {
        /// Where it starts.
        offset: usize,
    },
    /// A field contains an element; fields hold text only.
    #[error("field <{field}> contains element <{element}>; fields hold text only")]
    NestedElement {
        /// The field.
        field: String,
        /// The element inside it.
        element: String,
    },
    /// A field uses an entity other than the five XML predefines.
    #[error("field <{field}> uses unknown entity &{entity}; (only &lt; &gt; &amp; &apos; &quot; and character references are defined)")]
    UnknownEntity {
        /// The field.
        field: String,
        /// The entity's name (clipped if very long).
        entity: String,
    },
    /// A field holds a character XML 1.0 does not allow (`&#0;`, a raw U+0001, U+FFFF…): the
    /// document is not well-formed, and a replacement would change the data unseen.
    #[error("field <{field}> holds U+{code:04X}, a character XML 1.0 does not allow (raw or as a reference)")]
    ForbiddenChar {
        /// The field.
        field: String,
        /// The character's code point.
        code: u32,
    },
    /// A field has a malformed `&…;` reference, such as a bare `&` or `&#xZZ;`.
    #[error("field <{field}> has a malformed reference: {reason}")]
    BadReference {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// An end tag does not match the element it closes.
    #[error("</{found}> at byte {offset} does not close <{expected}>")]
    MismatchedTag {
        /// The element open at that point.
        expected: String,
        /// The end tag found.
        found: String,
        /// Where the end tag starts.
        offset: usize,
    },
    /// The body ends inside an element.
    #[error("the document ends inside <{0}>")]
    Unclosed(String),
    /// Any other malformed XML.
    #[error("malformed XML at byte {offset}: {reason}")]
    Syntax {
        /// Where the parser noticed.
        offset: usize,
        /// What it noticed.
        reason: String,
    },
    /// The fields do not form a valid snapshot (bad name, duplicate, too many, too large).
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
}

/// Parses a getFileInfo `<result>` document into a snapshot, one field per child element in
/// document order (`<name/>` and `<name></name>` give an empty value). See the module docs
/// for exactly what is accepted. Never panics, whatever the bytes.
pub fn parse_result_xml(body: &[u8]) -> Result<Snapshot, XmlError> {
    let text = std::str::from_utf8(body).map_err(|e| XmlError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let (base, doc) = match text.strip_prefix('\u{FEFF}') {
        Some(rest) => ('\u{FEFF}'.len_utf8(), rest),
        None => (0, text),
    };
    // quick-xml's defaults are what we want: end tags are checked against start tags, text
    // is not trimmed, and `<a/>` stays one `Empty` event.
    let mut reader = Reader::from_str(doc);
    let at = |pos: u64| base.saturating_add(usize::try_from(pos).unwrap_or(usize::MAX));

    let mut builder = Snapshot::builder();
    let mut state = State::Prolog;
    // Reused across fields so a document costs no allocation per field.
    let mut field = String::new();
    let mut value = String::new();
    // Whether markup other than leading whitespace was seen, for the declaration's placement.
    let mut seen_markup = false;
    loop {
        let start = at(reader.buffer_position());
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(err) => return Err(from_quick_xml(err, at(reader.error_position()), doc, base)),
        };
        match event {
            Event::Decl(decl) => {
                if state != State::Prolog || seen_markup {
                    return Err(XmlError::MisplacedDeclaration { offset: start });
                }
                check_declaration(&decl, start)?;
                seen_markup = true;
            }
            Event::DocType(_) => return Err(XmlError::Dtd { offset: start }),
            Event::Comment(_) | Event::PI(_) => seen_markup = true,
            Event::Text(raw) => match state {
                State::Prolog if !is_whitespace(&raw) => {
                    return Err(XmlError::TextBeforeRoot { offset: start })
                }
                State::Epilog if !is_whitespace(&raw) => {
                    return Err(XmlError::TrailingContent { offset: start })
                }
                State::Field => append_text(&mut value, utf8(&raw, start)?, &field, true)?,
                // Stray text between fields (seed 001's `i`) carries nothing we can use.
                State::Prolog | State::Result | State::Epilog => {}
            },
            Event::CData(raw) => match state {
                State::Prolog => return Err(XmlError::TextBeforeRoot { offset: start }),
                State::Epilog => return Err(XmlError::TrailingContent { offset: start }),
                State::Field => append_text(&mut value, utf8(&raw, start)?, &field, false)?,
                State::Result => {}
            },
            Event::Start(element) => {
                let name = utf8(element.name().into_inner(), start)?;
                match state {
                    State::Prolog => {
                        open_root(&element, name, start)?;
                        state = State::Result;
                    }
                    State::Result => {
                        check_attributes(&element, start)?;
                        field.clear();
                        field.push_str(name);
                        value.clear();
                        state = State::Field;
                    }
                    State::Field => return Err(nested(&field, name)),
                    State::Epilog => return Err(XmlError::TrailingContent { offset: start }),
                }
            }
            Event::Empty(element) => {
                let name = utf8(element.name().into_inner(), start)?;
                match state {
                    State::Prolog => {
                        open_root(&element, name, start)?;
                        state = State::Epilog;
                    }
                    State::Result => {
                        check_attributes(&element, start)?;
                        builder.push(name, "")?;
                    }
                    State::Field => return Err(nested(&field, name)),
                    State::Epilog => return Err(XmlError::TrailingContent { offset: start }),
                }
            }
            Event::End(_) => match state {
                State::Field => {
                    builder.push(&field, &value)?;
                    state = State::Result;
                }
                State::Result => state = State::Epilog,
                // quick-xml reports an end tag with nothing open as an error before this.
                State::Prolog | State::Epilog => {
                    return Err(XmlError::Syntax {
                        offset: start,
                        reason: "an end tag with no element open".to_owned(),
                    })
                }
            },
            Event::Eof => {
                return match state {
                    State::Prolog => Err(XmlError::NoRoot),
                    State::Result => Err(XmlError::Unclosed("result".to_owned())),
                    State::Field => Err(XmlError::Unclosed(field)),
                    State::Epilog => Ok(builder.finish()?),
                }
            }
        }
    }
}

/// Where the parser is in the document.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Before the root element.
    Prolog,
    /// Inside `<result>`, between fields.
    Result,
    /// Inside a field element.
    Field,
    /// After `</result>` (or `<result/>`).
    Epilog,
}

fn nested(field: &str, element: &str) -> XmlError {
    XmlError::NestedElement {
        field: field.to_owned(),
        element: clip(element).to_owned(),
    }
}

fn open_root(element: &BytesStart<'_>, name: &str, offset: usize) -> Result<(), XmlError> {
    if name != "result" {
        return Err(XmlError::WrongRoot(clip(name).to_owned()));
    }
    check_attributes(element, offset)
}

/// Attributes carry nothing cb uses, but a tag whose attributes do not parse is malformed.
fn check_attributes(element: &BytesStart<'_>, offset: usize) -> Result<(), XmlError> {
    for attribute in element.attributes() {
        attribute.map_err(|e| XmlError::Syntax {
            offset,
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

fn check_declaration(decl: &BytesDecl<'_>, offset: usize) -> Result<(), XmlError> {
    decl.version().map_err(|e| XmlError::Syntax {
        offset,
        reason: e.to_string(),
    })?;
    if let Some(encoding) = decl.encoding() {
        let encoding = encoding.map_err(|e| XmlError::Syntax {
            offset,
            reason: e.to_string(),
        })?;
        if !encoding.eq_ignore_ascii_case(b"UTF-8") && !encoding.eq_ignore_ascii_case(b"UTF8") {
            return Err(XmlError::Encoding(
                clip(&String::from_utf8_lossy(&encoding)).to_owned(),
            ));
        }
    }
    Ok(())
}

/// Maps quick-xml's errors to ours, recognizing the DTD-related ones: quick-xml reads
/// `<!DOCTYPE` itself but fails on a bare `<!ENTITY`, `<!ELEMENT`, … as unknown markup.
fn from_quick_xml(err: QxError, offset: usize, doc: &str, base: usize) -> XmlError {
    let markup_declaration = || {
        let local = offset.saturating_sub(base);
        doc.get(local..).is_some_and(|rest| {
            ["<!ENTITY", "<!ELEMENT", "<!ATTLIST", "<!NOTATION", "<!["]
                .iter()
                .any(|p| rest.starts_with(p))
        })
    };
    match err {
        QxError::Syntax(SyntaxError::UnclosedDoctype)
        | QxError::IllFormed(IllFormedError::MissingDoctypeName) => XmlError::Dtd { offset },
        QxError::Syntax(SyntaxError::InvalidBangMarkup) if markup_declaration() => {
            XmlError::Dtd { offset }
        }
        QxError::IllFormed(IllFormedError::MismatchedEndTag { expected, found }) => {
            XmlError::MismatchedTag {
                expected: clip(&expected).to_owned(),
                found: clip(&found).to_owned(),
                offset,
            }
        }
        other => XmlError::Syntax {
            offset,
            reason: other.to_string(),
        },
    }
}

fn utf8(raw: &[u8], offset: usize) -> Result<&str, XmlError> {
    // The whole body was checked already and quick-xml splits only at ASCII markup, so this
    // cannot fail; it stays an error rather than a panic all the same.
    std::str::from_utf8(raw).map_err(|e| XmlError::NotUtf8 {
        offset: offset + e.valid_up_to(),
    })
}

fn is_whitespace(raw: &[u8]) -> bool {
    raw.iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Appends a piece of field text to `out`: line ends normalized, disallowed characters
/// refused, and — for text but not CDATA (`references`) — `&…;` references decoded.
fn append_text(out: &mut String, raw: &str, field: &str, references: bool) -> Result<(), XmlError> {
    let bytes = raw.as_bytes();
    // Every special case starts at an ASCII byte or at 0xEF, a UTF-8 lead byte, so `i` and
    // `run_start` always sit on char boundaries and the slices below are sound.
    let mut run_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let (replacement, width) = match bytes[i] {
            b'\r' => (
                '\n',
                if bytes.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                },
            ),
            b'&' if references => {
                out.push_str(&raw[run_start..i]);
                let (decoded, width) = reference(&raw[i..], field)?;
                out.push(decoded);
                i += width;
                run_start = i;
                continue;
            }
            _ => match crate::render::forbidden_width(bytes, i) {
                Some(width) => {
                    let code = raw[i..i + width].chars().next().map_or(0, u32::from);
                    return Err(XmlError::ForbiddenChar {
                        field: field.to_owned(),
                        code,
                    });
                }
                None => {
                    i += 1;
                    continue;
                }
            },
        };
        out.push_str(&raw[run_start..i]);
        out.push(replacement);
        i += width;
        run_start = i;
    }
    out.push_str(&raw[run_start..]);
    // Fail early on a huge field rather than after buffering all of it.
    if out.len() > Snapshot::MAX_BYTES {
        return Err(SnapshotError::TooLarge {
            max: Snapshot::MAX_BYTES,
        }
        .into());
    }
    Ok(())
}

/// Decodes the reference at the start of `text` (which starts with `&`): the character it
/// stands for and the reference's length in bytes.
fn reference(text: &str, field: &str) -> Result<(char, usize), XmlError> {
    let bad = |reason: String| XmlError::BadReference {
        field: field.to_owned(),
        reason,
    };
    let body = &text[1..];
    // A reference is `&` name-or-number `;`; the scan stops at the first byte that cannot be
    // part of one, so a stray `&` in prose is reported instead of swallowing the text.
    let end = body.bytes().position(|b| {
        !(b.is_ascii_alphanumeric() || matches!(b, b'#' | b'_' | b'-' | b'.' | b':') || b >= 0x80)
    });
    let name = match end {
        Some(end) if body.as_bytes()[end] == b';' => &body[..end],
        _ => {
            return Err(bad(
                "`&` must start a reference such as `&amp;` or `&#38;`".to_owned()
            ))
        }
    };
    let width = 1 + name.len() + 1;
    let decoded = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => match name.strip_prefix('#') {
            Some(number) => {
                let (digits, radix) = match number.strip_prefix('x') {
                    Some(hex) => (hex, 16),
                    None => (number, 10),
                };
                // `from_str_radix` would also take a sign; XML allows digits only.
                let code = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                    u32::from_str_radix(digits, radix).ok()
                } else {
                    None
                };
                match code.map(char::from_u32) {
                    Some(Some(c)) if crate::render::is_xml_char(c) => c,
                    Some(Some(c)) => {
                        return Err(XmlError::ForbiddenChar {
                            field: field.to_owned(),
                            code: u32::from(c),
                        })
                    }
                    Some(None) => {
                        return Err(bad(format!(
                            "&{}; is not a Unicode scalar value",
                            clip(name)
                        )))
                    }
                    None => {
                        return Err(bad(format!(
                        "&{}; is not a decimal (&#38;) or hexadecimal (&#x26;) character reference",
                        clip(name)
                    )))
                    }
                }
            }
            None => {
                return Err(XmlError::UnknownEntity {
                    field: field.to_owned(),
                    entity: clip(name).to_owned(),
                })
            }
        },
    };
    Ok((decoded, width))
}

/// Keeps names echoed in error messages short whatever the input holds.
fn clip(s: &str) -> &str {
    crate::clipped(s, 64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::Callback;
    use crate::render::fixtures::{seed_001_snapshot, SEED_001_FIELDS, SEED_001_XML};
    use crate::render::render;

    fn parse(doc: &str) -> Result<Snapshot, XmlError> {
        parse_result_xml(doc.as_bytes())
    }

    fn fields(doc: &str) -> Vec<(String, String)> {
        parse(doc)
            .unwrap_or_else(|e| panic!("{doc:?}: {e}"))
            .iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|&(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn seed_001_sample_parses_to_all_52_fields_in_order_despite_the_stray_i() {
        let snapshot = parse(SEED_001_XML).unwrap();
        assert_eq!(snapshot.len(), 52);
        assert_eq!(snapshot, seed_001_snapshot());
        assert_eq!(snapshot.get("id"), Some("556114"));
        assert_eq!(snapshot.get("user_firstname"), Some("エヴァート"));
        assert_eq!(snapshot.get("user_lastname"), Some("ぽつ"));
        assert_eq!(snapshot.get("geo_latitude"), Some(""));
        let names: Vec<&str> = snapshot.iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], "id");
        assert_eq!(names[37..40], ["user_firstname", "user_lastname", "url"]);
        assert_eq!(
            names[46..49],
            ["geo_latitude", "geo_longitude", "externalid"]
        );
        assert_eq!(names[51], "moderationdeniedid");
        assert_eq!(SEED_001_FIELDS.len(), 52);
    }

    #[test]
    fn rendering_the_seed_sample_as_xml_and_parsing_it_back_is_the_identity() {
        let c = Callback::from_json(r#"{"url":"http://x.org/"}"#).unwrap();
        let doc = render(&seed_001_snapshot(), &c).bytes;
        assert_eq!(parse_result_xml(&doc).unwrap(), seed_001_snapshot());
    }

    #[test]
    fn entities_character_references_and_cdata_are_decoded() {
        assert_eq!(
            fields(
                "<result><a>&lt;&gt;&amp;&apos;&quot;</a><b>&#65;&#x42;&#x1F600;&#13;</b>\
                 <c><![CDATA[<raw> & ]]>tail</c><d>x<!-- note -->y<?pi z?></d></result>"
            ),
            pairs(&[
                ("a", "<>&'\""),
                ("b", "AB😀\r"),
                ("c", "<raw> & tail"),
                ("d", "xy"),
            ])
        );
    }

    #[test]
    fn raw_line_ends_are_normalized_but_referenced_carriage_returns_survive() {
        assert_eq!(
            fields("<result><a>1\r\n2\r3\n4&#13;\n5</a><b><![CDATA[x\r\ny]]></b></result>"),
            pairs(&[("a", "1\n2\n3\n4\r\n5"), ("b", "x\ny")])
        );
    }

    #[test]
    fn values_are_kept_verbatim_without_trimming() {
        assert_eq!(
            fields("<result><a>  padded\t</a><b>\n</b><c></c><d/></result>"),
            pairs(&[("a", "  padded\t"), ("b", "\n"), ("c", ""), ("d", "")])
        );
    }

    /// A document holding a character XML forbids is not well-formed: refused, naming the
    /// field and the character, whether it is raw, referenced or in CDATA.
    #[test]
    fn characters_xml_forbids_are_refused_naming_the_field() {
        for (doc, field, code) in [
            ("<result><a>x\u{1}y</a></result>", "a", 1),
            ("<result><a>ok</a><b>x\u{FFFF}</b></result>", "b", 0xFFFF),
            ("<result><b>A&#0;B</b></result>", "b", 0),
            ("<result><b>&#1;</b></result>", "b", 1),
            ("<result><c>&#xFFFE;</c></result>", "c", 0xFFFE),
            ("<result><d><![CDATA[x\u{1B}]]></d></result>", "d", 0x1B),
        ] {
            match parse(doc) {
                Err(XmlError::ForbiddenChar { field: f, code: c }) => {
                    assert_eq!((f.as_str(), c), (field, code), "{doc:?}")
                }
                other => panic!("{doc:?}: {other:?}"),
            }
        }
        let err = parse("<result><b>A&#0;B</b></result>")
            .unwrap_err()
            .to_string();
        assert!(err.contains("<b>") && err.contains("U+0000"), "{err}");
        // Tab, LF and CR are characters XML allows.
        assert_eq!(
            fields("<result><a>&#9;&#10;&#13;</a></result>"),
            pairs(&[("a", "\t\n\r")])
        );
    }

    #[test]
    fn comments_processing_instructions_bom_and_leading_whitespace_are_tolerated() {
        let doc = "\u{FEFF}  <?xml version='1.0' encoding='utf-8' standalone='yes'?>\n<!-- hi -->\
                   <?php echo ?>\n<result note=\"x\"><a k='v'>1</a><!-- c -->text<b/>\n</result>\n<!-- bye -->\n";
        assert_eq!(fields(doc), pairs(&[("a", "1"), ("b", "")]));
        assert_eq!(parse("<result/>").unwrap(), Snapshot::default());
        assert_eq!(parse("<result></result>").unwrap(), Snapshot::default());
    }

    #[test]
    fn a_dtd_is_rejected_before_any_entity_is_expanded() {
        let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>
<result><a>&lol2;</a></result>"#;
        assert!(
            matches!(parse(laughs), Err(XmlError::Dtd { .. })),
            "{:?}",
            parse(laughs)
        );
        let xxe = r#"<!DOCTYPE result [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><result><a>&xxe;</a></result>"#;
        assert_eq!(parse(xxe), Err(XmlError::Dtd { offset: 0 }));
        assert!(matches!(
            parse("<!doctype result><result/>"),
            Err(XmlError::Dtd { .. })
        ));
        assert!(matches!(
            parse("<!DOCTYPE result"),
            Err(XmlError::Dtd { .. })
        ));
        assert!(matches!(
            parse("<result><!DOCTYPE x><a/></result>"),
            Err(XmlError::Dtd { .. })
        ));
    }

    #[test]
    fn an_entity_declaration_outside_a_dtd_is_rejected_as_one() {
        for doc in [
            r#"<!ENTITY x "y"><result/>"#,
            r#"<result><!ENTITY x "y"></result>"#,
            r#"<result><a><!ELEMENT a ANY></a></result>"#,
        ] {
            let err = parse(doc).unwrap_err();
            assert!(matches!(err, XmlError::Dtd { .. }), "{doc}: {err:?}");
            assert!(err.to_string().contains("DTD"), "{err}");
        }
    }

    #[test]
    fn an_unknown_entity_is_rejected_naming_field_and_entity() {
        let err = parse("<result><title>&nbsp;</title></result>").unwrap_err();
        assert_eq!(
            err,
            XmlError::UnknownEntity {
                field: "title".into(),
                entity: "nbsp".into()
            }
        );
        assert!(err.to_string().contains("&nbsp;"), "{err}");
    }

    #[test]
    fn malformed_references_are_rejected() {
        for doc in [
            "<result><a>fish & chips</a></result>",
            "<result><a>&amp</a></result>",
            "<result><a>&#;</a></result>",
            "<result><a>&#x;</a></result>",
            "<result><a>&#xZZ;</a></result>",
            "<result><a>&#+65;</a></result>",
            "<result><a>&#X41;</a></result>",
            "<result><a>&#xD800;</a></result>",
            "<result><a>&#x110000;</a></result>",
            "<result><a>&#99999999999999999999;</a></result>",
        ] {
            assert!(
                matches!(parse(doc), Err(XmlError::BadReference { ref field, .. }) if field == "a"),
                "{doc}: {:?}",
                parse(doc)
            );
        }
    }

    #[test]
    fn a_nested_element_is_rejected_naming_the_field() {
        for doc in [
            "<result><title>a <b>bold</b> move</title></result>",
            "<result><title><br/></title></result>",
        ] {
            let err = parse(doc).unwrap_err();
            assert!(
                matches!(&err, XmlError::NestedElement { field, .. } if field == "title"),
                "{err:?}"
            );
            assert!(err.to_string().contains("<title>"), "{err}");
        }
    }

    #[test]
    fn a_root_other_than_result_is_rejected() {
        assert_eq!(
            parse("<response><id>1</id></response>"),
            Err(XmlError::WrongRoot("response".into()))
        );
        assert_eq!(parse("<rss/>"), Err(XmlError::WrongRoot("rss".into())));
        assert_eq!(parse(""), Err(XmlError::NoRoot));
        assert_eq!(parse("  <!-- nothing -->\n"), Err(XmlError::NoRoot));
    }

    #[test]
    fn a_body_that_is_not_utf8_is_rejected() {
        assert_eq!(
            parse_result_xml(b"<result><a>caf\xe9</a></result>"),
            Err(XmlError::NotUtf8 { offset: 14 })
        );
        // UTF-16 with a byte-order mark.
        assert!(matches!(
            parse_result_xml(b"\xff\xfe<\0r\0"),
            Err(XmlError::NotUtf8 { offset: 0 })
        ));
        assert_eq!(
            parse(r#"<?xml version="1.0" encoding="ISO-8859-1"?><result/>"#),
            Err(XmlError::Encoding("ISO-8859-1".into()))
        );
    }

    #[test]
    fn duplicate_and_invalid_field_names_are_rejected_by_snapshot_rules() {
        assert_eq!(
            parse("<result><a>1</a><a>2</a></result>"),
            Err(XmlError::Snapshot(SnapshotError::DuplicateField(
                "a".into()
            )))
        );
        assert!(matches!(
            parse("<result><x:a>1</x:a></result>"),
            Err(XmlError::Snapshot(SnapshotError::BadFieldName(_)))
        ));
        assert!(matches!(
            parse("<result><1a>1</1a></result>"),
            Err(XmlError::Snapshot(SnapshotError::BadFieldName(_)))
        ));
    }

    #[test]
    fn too_many_fields_are_rejected_by_snapshot_rules() {
        let mut doc = String::from("<result>");
        for i in 0..=Snapshot::MAX_FIELDS {
            doc.push_str(&format!("<f{i}/>"));
        }
        doc.push_str("</result>");
        assert_eq!(
            parse(&doc),
            Err(XmlError::Snapshot(SnapshotError::TooManyFields {
                max: Snapshot::MAX_FIELDS
            }))
        );
    }

    #[test]
    fn mismatched_and_unclosed_tags_are_rejected() {
        assert!(matches!(
            parse("<result><a>1</b></result>"),
            Err(XmlError::MismatchedTag { ref expected, ref found, .. }) if expected == "a" && found == "b"
        ));
        assert_eq!(
            parse("<result><a>1</a>"),
            Err(XmlError::Unclosed("result".into()))
        );
        assert_eq!(parse("<result><a>1"), Err(XmlError::Unclosed("a".into())));
        assert!(matches!(parse("<result><a"), Err(XmlError::Syntax { .. })));
        assert!(matches!(
            parse("<result><a b=>1</a></result>"),
            Err(XmlError::Syntax { .. })
        ));
    }

    #[test]
    fn only_whitespace_comments_and_processing_instructions_may_follow_the_root() {
        for doc in [
            "<result/>trailing",
            "<result></result><result></result>",
            "<result></result><a/>",
            "<result></result><![CDATA[x]]>",
        ] {
            assert!(
                matches!(parse(doc), Err(XmlError::TrailingContent { .. })),
                "{doc}: {:?}",
                parse(doc)
            );
        }
        assert!(matches!(
            parse("<result></result></result>"),
            Err(XmlError::Syntax { .. })
        ));
        assert!(matches!(
            parse("junk<result/>"),
            Err(XmlError::TextBeforeRoot { offset: 0 })
        ));
        assert_eq!(
            parse("<result/><?xml version=\"1.0\"?>"),
            Err(XmlError::MisplacedDeclaration { offset: 9 })
        );
    }

    #[test]
    fn error_messages_are_lowercase_sentences() {
        let errors = [
            XmlError::NotUtf8 { offset: 1 },
            XmlError::Encoding("x".into()),
            XmlError::Dtd { offset: 1 },
            XmlError::MisplacedDeclaration { offset: 1 },
            XmlError::NoRoot,
            XmlError::WrongRoot("x".into()),
            XmlError::TextBeforeRoot { offset: 1 },
            XmlError::TrailingContent { offset: 1 },
            XmlError::Unclosed("a".into()),
            XmlError::Syntax {
                offset: 1,
                reason: "x".into(),
            },
        ];
        for e in errors {
            let m = e.to_string();
            assert!(m.starts_with(|c: char| !c.is_uppercase()), "{m}");
        }
    }

    /// Arbitrary field names: mostly ASCII, some non-ASCII XML names.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z_][A-Za-z0-9_.-]{0,15}",
            "[a-zA-Z_\u{C0}-\u{D6}\u{3041}-\u{3096}\u{4E00}-\u{4E20}][a-z0-9\u{B7}\u{300}-\u{36F}\u{30A1}-\u{30FA}-]{0,8}",
        ]
    }

    /// Arbitrary values XML can carry: any Unicode minus the characters XML 1.0 forbids.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[ -~\t\r\n<>&'\"]{0,40}",
            Just(String::new()),
        ]
        .prop_map(|s| {
            s.chars()
                .filter(|&c| crate::render::is_xml_char(c))
                .collect()
        })
    }

    fn snapshot() -> impl Strategy<Value = Snapshot> {
        prop::collection::vec((name(), value()), 0..24).prop_map(|pairs| {
            let mut seen = std::collections::HashSet::new();
            Snapshot::from_pairs(
                pairs
                    .iter()
                    .filter(|(n, _)| seen.insert(n.clone()))
                    .map(|(n, v)| (n.as_str(), v.as_str())),
            )
            .expect("generated names are valid and unique")
        })
    }

    /// One edit of a document: insert, delete or replace a byte run.
    #[derive(Debug, Clone)]
    enum Edit {
        Insert(usize, Vec<u8>),
        Delete(usize, usize),
        Replace(usize, u8),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let snippet = prop_oneof![
            prop::collection::vec(any::<u8>(), 1..4),
            prop::sample::select(vec![
                b"<".to_vec(),
                b">".to_vec(),
                b"&".to_vec(),
                b"</".to_vec(),
                b"/>".to_vec(),
                b"<!DOCTYPE x>".to_vec(),
                b"<!ENTITY".to_vec(),
                b"<![CDATA[".to_vec(),
                b"]]>".to_vec(),
                b"<!--".to_vec(),
                b"-->".to_vec(),
                b"<?".to_vec(),
                b"?>".to_vec(),
                b"&#x".to_vec(),
                b"&lt;".to_vec(),
                b"<a>".to_vec(),
                b"\xEF\xBB\xBF".to_vec(),
                "エ".as_bytes().to_vec(),
            ]),
        ];
        prop_oneof![
            (any::<usize>(), snippet).prop_map(|(at, s)| Edit::Insert(at, s)),
            (any::<usize>(), 1..16usize).prop_map(|(at, n)| Edit::Delete(at, n)),
            (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Replace(at, b)),
        ]
    }

    fn apply(doc: &mut Vec<u8>, edit: &Edit) {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match edit {
            Edit::Insert(i, bytes) => {
                let i = at(*i, doc.len());
                doc.splice(i..i, bytes.iter().copied());
            }
            Edit::Delete(i, n) => {
                let i = at(*i, doc.len());
                let end = (i + n).min(doc.len());
                doc.drain(i..end);
            }
            Edit::Replace(i, b) => {
                if !doc.is_empty() {
                    let i = *i % doc.len();
                    doc[i] = *b;
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_result_xml(&body);
        }

        #[test]
        fn arbitrary_text_never_panics(body in "[<>/!?&;#x a-z0-9=\"'\\[\\]-]{0,200}") {
            let _ = parse_result_xml(body.as_bytes());
        }

        #[test]
        fn mutations_of_the_seed_sample_never_panic(edits in prop::collection::vec(edit(), 1..8)) {
            let mut doc = SEED_001_XML.as_bytes().to_vec();
            for e in &edits {
                apply(&mut doc, e);
            }
            let _ = parse_result_xml(&doc);
        }

        #[test]
        fn any_snapshot_rendered_as_xml_parses_back_identically(snapshot in snapshot()) {
            let c = Callback::from_json(r#"{"url":"http://x.org/"}"#).unwrap();
            let doc = render(&snapshot, &c).bytes;
            prop_assert_eq!(parse_result_xml(&doc), Ok(snapshot));
        }
    }
}
