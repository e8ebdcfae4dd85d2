//! Payload rendering: turns a file's [`Snapshot`] and a [`Callback`]'s format and projection
//! into the exact bytes a delivery sends, and says where those bytes go (request body or URL
//! query).
//!
//! Rendering is a pure function of `(snapshot, callback)` and deterministic to the byte: the
//! log records the [`Digest`] of what was sent, and `cbctl replay` re-renders and compares, so
//! the same inputs must give the same bytes on every machine and in every release that reads
//! that log. The three formats live in their own modules (`xml`, `json`, `query`); this
//! module owns the projection (which fields, under which names) and the request URL.

use crate::config::{Callback, FieldSpec, Format, Projection, ValueKind};
use crate::digest::Digest;
use crate::snapshot::{Snapshot, SnapshotView};

mod json;
mod query;
mod xml;

pub mod fixtures;

pub(crate) use xml::{forbidden_width, is_xml_char};

/// Where the rendered bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// The bytes are the request body (or the mail body), of this media type.
    Body {
        /// The `Content-Type` to send them with.
        content_type: &'static str,
    },
    /// The bytes are an `application/x-www-form-urlencoded` query string to append to the
    /// callback URL (see [`request_url`]); an HTTP request then has no body.
    Query,
}

/// A rendered payload: the exact bytes to send and where they go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rendered {
    /// Where the bytes go.
    pub placement: Placement,
    /// The payload, byte for byte.
    pub bytes: Vec<u8>,
}

impl Rendered {
    /// SHA-256 of [`bytes`](Self::bytes): what the log records as "what was sent".
    pub fn digest(&self) -> Digest {
        Digest::of(&self.bytes)
    }
}

/// The file id of the sample a test send carries (SPEC §4): no real file has it in the
/// payload's sense, since it never comes from a change.
pub const TEST_FILE_ID: &str = "cb-test";

/// The fields of the documented sample a test send renders (`POST …/callbacks/{name}/test`):
/// shaped like a getFileInfo `<result>`, the same every time, so a receiver can recognise
/// it (besides the `cb-test: 1` header).
pub const TEST_SAMPLE_FIELDS: [(&str, &str); 10] = [
    ("id", TEST_FILE_ID),
    ("status", "3"),
    ("contenttype", "image/jpeg"),
    ("filetype", "1"),
    ("filename", "cb-test.jpg"),
    ("title", "cb test send"),
    ("message", "A test request from cb: no file changed."),
    ("date", "2026-01-01 00:00:00"),
    ("moderationstatus", "0"),
    ("rating", "0"),
];

/// The sample a test send renders: [`TEST_SAMPLE_FIELDS`], in order.
pub fn test_sample() -> Snapshot {
    Snapshot::from_pairs(TEST_SAMPLE_FIELDS).expect("the test sample is a valid snapshot")
}

/// Renders `snapshot` (a [`Snapshot`] or a [`SnapshotView`] of a stored body) as `callback`
/// asks: its format, with its projection applied.
///
/// Mail targets render exactly like HTTP ones; the dispatcher puts the bytes in the mail body.
pub fn render<'a>(snapshot: impl Into<SnapshotView<'a>>, callback: &Callback) -> Rendered {
    let fields = Projected::new(snapshot.into(), &callback.projection);
    match callback.format {
        Format::Xml => Rendered {
            placement: Placement::Body {
                content_type: xml::CONTENT_TYPE,
            },
            bytes: xml::render(fields),
        },
        Format::Json => Rendered {
            placement: Placement::Body {
                content_type: json::CONTENT_TYPE,
            },
            bytes: json::render(fields),
        },
        Format::Query => Rendered {
            placement: Placement::Query,
            bytes: query::render(fields),
        },
    }
}

/// A callback URL as the URL standard serializes it, which is how it goes on the wire: a
/// request line is ASCII, so a path or query written with other characters (`/ü?x=ä`) goes
/// out percent-encoded and an internationalized host as punycode (`bücher.example` →
/// `xn--bcher-kva.example`). The callback keeps the URL as its owner wrote it; digests cover
/// only what is rendered, so they do not change.
pub fn wire_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => String::from(u),
        // Validated callbacks parse; anything else is left for the HTTP client to refuse.
        Err(_) => url.to_owned(),
    }
}

/// The URL to request: for [`Placement::Query`], `base` with the rendered query appended
/// (after `?`, or after `&` if `base` already has a query); for [`Placement::Body`], `base`
/// unchanged.
///
/// `base` is first written as on the wire ([`wire_url`]).
///
/// An empty query (no projected field was in the snapshot) leaves `base` unchanged rather
/// than adding a dangling `?`. A fragment in `base` stays last, where URL syntax needs it
/// (validated callbacks have none, but this function does not rely on that).
pub fn request_url(base: &str, rendered: &Rendered) -> String {
    let base = wire_url(base);
    if rendered.placement != Placement::Query || rendered.bytes.is_empty() {
        return base;
    }
    let base = base.as_str();
    // Query bytes are ASCII by construction; lossy conversion only guards hand-built values.
    let query = String::from_utf8_lossy(&rendered.bytes);
    let (head, fragment) = match base.find('#') {
        Some(i) => base.split_at(i),
        None => (base, ""),
    };
    let separator = match head.find('?') {
        None => "?",
        // `http://x/cb?` or `http://x/cb?a=1&` already end in a separator.
        Some(_) if head.ends_with(['?', '&']) => "",
        Some(_) => "&",
    };
    let mut url = String::with_capacity(base.len() + separator.len() + query.len());
    url.push_str(head);
    url.push_str(separator);
    url.push_str(&query);
    url.push_str(fragment);
    url
}

/// The `(name, value)` pairs a payload carries, in order: the snapshot seen through a
/// projection. Borrowing, so no format copies a field before writing it.
#[derive(Clone, Copy)]
pub(crate) struct Projected<'a> {
    snapshot: SnapshotView<'a>,
    specs: Option<&'a [FieldSpec]>,
}

impl<'a> Projected<'a> {
    fn new(snapshot: SnapshotView<'a>, projection: &'a Projection) -> Self {
        let specs = match projection {
            Projection::All => None,
            Projection::Fields(specs) => Some(specs.as_slice()),
        };
        Projected { snapshot, specs }
    }

    /// The whole snapshot, when the projection is `All`: its names are XML names and unique
    /// by [`Snapshot`]'s invariant, so a format may write them without checking.
    pub(crate) fn whole(self) -> Option<SnapshotView<'a>> {
        match self.specs {
            None => Some(self.snapshot),
            Some(_) => None,
        }
    }

    /// The pairs in payload order. A listed field missing from the snapshot is skipped — not
    /// sent empty — because senders rely on absence (Screen9's `deleted` callback carries only
    /// `status` and `mediaid`); a field present with an empty value is sent empty.
    pub(crate) fn pairs(self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.typed_pairs().map(|(name, value, _)| (name, value))
    }

    /// [`pairs`](Self::pairs) with each value's JSON type (`String` for every field of
    /// the projection `All`).
    pub(crate) fn typed_pairs(self) -> impl Iterator<Item = (&'a str, &'a str, ValueKind)> + 'a {
        // Exactly one of the two halves is non-empty; chaining them gives both projections
        // one concrete iterator type without boxing.
        let (all, listed) = match self.specs {
            None => (Some(self.snapshot.iter()), None),
            Some(specs) => (None, Some(specs.iter())),
        };
        let snapshot = self.snapshot;
        let all = all
            .into_iter()
            .flatten()
            .map(|(name, value)| (name, value, ValueKind::String));
        let listed = listed.into_iter().flatten().filter_map(move |spec| {
            snapshot
                .get(&spec.field)
                .map(|value| (spec.param.as_str(), value, spec.kind))
        });
        all.chain(listed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;

    fn callback(json: &str) -> Callback {
        Callback::from_json(json).unwrap()
    }

    fn screen9() -> Callback {
        callback(
            r#"{"url":"http://cms.example.com","method":"GET","fields":["status","userid=uid","message","mediaid=id","title"]}"#,
        )
    }

    #[test]
    fn screen9_upload_callback_matches_the_seed_url_exactly() {
        let snapshot = Snapshot::from_pairs([
            ("status", "success"),
            ("uid", "rzLmShSpK-7kWkqh2oVCLA"),
            ("message", ""),
            ("id", "hAHlHXzOLgOQI2La-hWFpg"),
            ("title", "Video title"),
        ])
        .unwrap();
        let rendered = render(&snapshot, &screen9());
        assert_eq!(rendered.placement, Placement::Query);
        assert_eq!(
            request_url("http://cms.example.com", &rendered),
            "http://cms.example.com/?status=success&userid=rzLmShSpK-7kWkqh2oVCLA&message=&mediaid=hAHlHXzOLgOQI2La-hWFpg&title=Video+title"
        );
    }

    #[test]
    fn screen9_deleted_callback_carries_only_the_fields_the_snapshot_has() {
        let snapshot =
            Snapshot::from_pairs([("status", "deleted"), ("id", "-YBpbhPLZ7vQJnvYVBk-wh")])
                .unwrap();
        let deleted = callback(
            r#"{"url":"http://cms.example.com","method":"GET","fields":["status","mediaid=id"]}"#,
        );
        let rendered = render(&snapshot, &deleted);
        assert_eq!(
            rendered.bytes,
            b"status=deleted&mediaid=-YBpbhPLZ7vQJnvYVBk-wh"
        );
        assert_eq!(
            request_url("http://cms.example.com", &rendered),
            "http://cms.example.com/?status=deleted&mediaid=-YBpbhPLZ7vQJnvYVBk-wh"
        );
        // The same snapshot through the five-field upload callback: absent fields stay absent.
        assert_eq!(
            render(&snapshot, &screen9()).bytes,
            b"status=deleted&mediaid=-YBpbhPLZ7vQJnvYVBk-wh"
        );
    }

    #[test]
    fn missing_fields_are_omitted_but_empty_fields_are_sent_empty() {
        let snapshot = Snapshot::from_pairs([("id", "7"), ("message", "")]).unwrap();
        let c = callback(
            r#"{"url":"http://x.org/","format":"json","fields":["nothere","message","file=id"]}"#,
        );
        assert_eq!(render(&snapshot, &c).bytes, br#"{"message":"","file":"7"}"#);
        let c = callback(r#"{"url":"http://x.org/","fields":["nothere","message","file=id"]}"#);
        assert_eq!(
            render(&snapshot, &c).bytes,
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<result>\n  <message></message>\n  <file>7</file>\n</result>\n"
        );
    }

    #[test]
    fn renames_follow_the_projection_order_not_the_snapshot_order() {
        let snapshot = Snapshot::from_pairs([("a", "1"), ("b", "2"), ("c", "3")]).unwrap();
        let c = callback(
            r#"{"url":"http://x.org/","method":"GET","fields":["third=c","a","second=b"]}"#,
        );
        assert_eq!(render(&snapshot, &c).bytes, b"third=3&a=1&second=2");
    }

    #[test]
    fn all_fields_projection_keeps_snapshot_order_and_names() {
        let snapshot = Snapshot::from_pairs([("z", "1"), ("a", ""), ("m", "x")]).unwrap();
        let c = callback(r#"{"url":"http://x.org/","format":"json"}"#);
        assert_eq!(render(&snapshot, &c).bytes, br#"{"z":"1","a":"","m":"x"}"#);
    }

    #[test]
    fn placement_follows_the_format() {
        let snapshot = Snapshot::from_pairs([("id", "1")]).unwrap();
        let xml = render(&snapshot, &callback(r#"{"url":"http://x.org/"}"#));
        assert_eq!(
            xml.placement,
            Placement::Body {
                content_type: "application/xml"
            }
        );
        let json = render(
            &snapshot,
            &callback(r#"{"url":"http://x.org/","format":"json"}"#),
        );
        assert_eq!(
            json.placement,
            Placement::Body {
                content_type: "application/json"
            }
        );
        assert_eq!(request_url("http://x.org/", &json), "http://x.org/");
    }

    #[test]
    fn mail_targets_render_like_http_ones() {
        let snapshot = Snapshot::from_pairs([("id", "1"), ("title", "a b")]).unwrap();
        for (mail, http) in [
            (r#"{"url":"mailto:a@b.org"}"#, r#"{"url":"http://x.org/"}"#),
            (
                r#"{"url":"mailto:a@b.org","format":"json"}"#,
                r#"{"url":"http://x.org/","format":"json"}"#,
            ),
            (
                r#"{"url":"mailto:a@b.org","format":"query"}"#,
                r#"{"url":"http://x.org/","method":"GET"}"#,
            ),
        ] {
            assert_eq!(
                render(&snapshot, &callback(mail)),
                render(&snapshot, &callback(http)),
                "{mail}"
            );
        }
    }

    fn query(bytes: &[u8]) -> Rendered {
        Rendered {
            placement: Placement::Query,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn request_url_appends_with_ampersand_when_the_base_has_a_query() {
        let q = query(b"status=success&mediaid=x");
        assert_eq!(
            request_url("http://cms.example.com/cb?a=1", &q),
            "http://cms.example.com/cb?a=1&status=success&mediaid=x"
        );
        assert_eq!(
            request_url("http://cms.example.com/cb?", &q),
            "http://cms.example.com/cb?status=success&mediaid=x"
        );
        assert_eq!(
            request_url("http://cms.example.com/cb?a=1&", &q),
            "http://cms.example.com/cb?a=1&status=success&mediaid=x"
        );
        assert_eq!(
            request_url("http://x.org/cb#top", &q),
            "http://x.org/cb?status=success&mediaid=x#top"
        );
    }

    /// HTTP/1.1 request lines are ASCII: a callback URL written with other characters goes
    /// out percent-encoded (host in punycode), with or without a rendered query.
    #[test]
    fn request_url_is_ascii_whatever_the_callback_url_holds() {
        let q = query(b"status=success");
        assert_eq!(
            request_url("http://127.0.0.1:9000/q5/ü?x=ä", &q),
            "http://127.0.0.1:9000/q5/%C3%BC?x=%C3%A4&status=success"
        );
        let body = Rendered {
            placement: Placement::Body {
                content_type: "application/xml",
            },
            bytes: b"<result/>".to_vec(),
        };
        assert_eq!(
            request_url("https://Bücher.example/cb/ü", &body),
            "https://xn--bcher-kva.example/cb/%C3%BC"
        );
        assert_eq!(
            request_url("http://x.org/cb?a=%C3%A4", &body),
            "http://x.org/cb?a=%C3%A4",
            "what is already encoded stays as it is"
        );
    }

    #[test]
    fn request_url_leaves_the_base_alone_for_an_empty_query() {
        let empty = Rendered {
            placement: Placement::Query,
            bytes: Vec::new(),
        };
        assert_eq!(request_url("http://x.org/cb", &empty), "http://x.org/cb");
    }

    #[test]
    fn digest_is_sha256_of_the_bytes() {
        let rendered = render(
            &fixtures::seed_001_snapshot(),
            &callback(r#"{"url":"http://x.org/"}"#),
        );
        assert_eq!(rendered.digest(), Digest::of(&rendered.bytes));
        use sha2::Digest as _;
        let want: [u8; 32] = sha2::Sha256::digest(&rendered.bytes).into();
        assert_eq!(rendered.digest().0, want);
    }

    #[test]
    fn rendering_is_deterministic() {
        let snapshot = fixtures::seed_001_snapshot();
        for json in [
            r#"{"url":"http://x.org/"}"#,
            r#"{"url":"http://x.org/","format":"json"}"#,
            r#"{"url":"http://x.org/","method":"GET"}"#,
        ] {
            let c = callback(json);
            assert_eq!(
                render(&snapshot, &c),
                render(&snapshot.clone(), &c.clone()),
                "{json}"
            );
        }
    }
}
