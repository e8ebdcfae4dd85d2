//! Turning request bodies into log inputs: one change as JSON or as a getFileInfo XML
//! document, a batch of changes as NDJSON, a callback configuration.
//!
//! Everything is validated here, before anything is appended, and every refusal is an
//! [`ApiError`] naming what is wrong — so bad input gets a 4xx and the log never holds a
//! record the core would have to ignore.

use std::net::IpAddr;
use std::sync::Arc;

use cb_core::ingest::parse_result_xml;
use cb_core::{
    Callback, CallbackSpec, EventKind, FileCallback, FileId, FileKey, ProjectId, Snapshot, Target,
};
use cb_dispatcher::target::non_public_reason;
use cb_store::{Change, Input};
use serde::Deserialize;

use crate::error::ApiError;

/// The JSON shape of one change (`POST /v1/changes`, one line of a batch), its `file` read
/// as `F`: first as strings only ([`Snapshot`]'s own reader, which borrows them from the
/// input), then, only if that fails, as [`JsonFile`], which also takes scalars
/// ([`parse_change`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBody<F> {
    project: String,
    file_id: String,
    event: String,
    file: F,
    #[serde(default)]
    callbacks: Option<Vec<CallbackSpec>>,
}

/// One change's JSON. Most platforms send every value as a string, which the strings-only
/// reader takes at the cost it always had; a body it refuses is read again as [`JsonFile`],
/// whose error, if it refuses too, is the one given. (Taking every body through `JsonFile`
/// cost batched ingest about 5 %: each value is read twice, once to find its end.)
fn parse_change(text: &str) -> serde_json::Result<ChangeBody<Snapshot>> {
    serde_json::from_str::<ChangeBody<Snapshot>>(text).or_else(|_| {
        let body: ChangeBody<JsonFile> = serde_json::from_str(text)?;
        Ok(ChangeBody {
            project: body.project,
            file_id: body.file_id,
            event: body.event,
            file: body.file.0,
            callbacks: body.callbacks,
        })
    })
}

/// A change's `file` object as a platform writes it: each value a string, or a JSON scalar
/// a platform need not stringify — a number or boolean keeps its JSON text exactly as sent
/// (`120`, `1.50`, `true`), and `null` is the empty string. A callback's typed `fields`
/// (`duration:number`, `live:bool`) give them back typed. Objects and arrays are refused:
/// a field holds one value (JSON text for a `:json` field is sent as a string).
struct JsonFile(Snapshot);

impl<'de> Deserialize<'de> for JsonFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = JsonFile;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of fields, each a string, number, boolean or null")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonFile, A::Error> {
                use serde::de::Error;
                let mut b = Snapshot::builder();
                let n = map.size_hint().unwrap_or(64).min(Snapshot::MAX_FIELDS);
                b.reserve(n, n * 16);
                while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let raw: &'de serde_json::value::RawValue = map.next_value()?;
                    let value = scalar_text(raw.get())
                        .map_err(|what| A::Error::custom(format!("field {name:?} is {what}")))?;
                    b.push(&name, &value).map_err(A::Error::custom)?;
                }
                b.finish().map(JsonFile).map_err(A::Error::custom)
            }
        }
        d.deserialize_map(V)
    }
}

/// The text of one JSON value of a change's `file`: a string unescaped, a number or boolean
/// as written, `null` empty; `Err` names what else it is.
fn scalar_text(raw: &str) -> Result<std::borrow::Cow<'_, str>, &'static str> {
    use std::borrow::Cow;
    match raw.as_bytes().first() {
        // Without escapes, a string's text is what is between its quotes.
        Some(b'"') if !raw.contains('\\') => Ok(Cow::Borrowed(&raw[1..raw.len() - 1])),
        Some(b'"') => serde_json::from_str::<String>(raw)
            .map(Cow::Owned)
            .map_err(|_| "a string that does not read"),
        Some(b'n') => Ok(Cow::Borrowed("")),
        Some(b't' | b'f' | b'-' | b'0'..=b'9') => Ok(Cow::Borrowed(raw)),
        Some(b'{') => Err(
            "an object: give a string (JSON text for a :json field), a number, a boolean or null",
        ),
        Some(b'[') => Err(
            "an array: give a string (JSON text for a :json field), a number, a boolean or null",
        ),
        _ => Err("not a JSON value"),
    }
}

/// What ingest needs to know about the daemon.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// An SMTP relay is configured, so `mailto:` callbacks can be delivered.
    pub smtp: bool,
    /// `--allow-private-targets`: callbacks to non-public addresses are delivered, so they
    /// get no warning ([`target_warnings`]).
    pub allow_private_targets: bool,
}

/// Parses a project id from a path or query.
pub fn project(s: &str) -> Result<ProjectId, ApiError> {
    ProjectId::new(s).map_err(|e| ApiError::bad_request("bad_id", format!("project: {e}")))
}

/// Parses a file id from a path or query.
pub fn file_id(s: &str) -> Result<FileId, ApiError> {
    FileId::new(s).map_err(|e| ApiError::bad_request("bad_id", format!("file_id: {e}")))
}

/// Parses an event kind.
pub fn event(s: &str) -> Result<EventKind, ApiError> {
    s.parse::<EventKind>()
        .map_err(|e| ApiError::bad_request("unknown_event", e.to_string()))
}

/// One change from a JSON object.
pub fn json_change(body: &[u8], rules: Rules) -> Result<Input, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("not UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    let parsed =
        parse_change(text).map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?;
    change_from(parsed, rules)
}

fn change_from(body: ChangeBody<Snapshot>, rules: Rules) -> Result<Input, ApiError> {
    let file = FileKey::new(project(&body.project)?, file_id(&body.file_id)?);
    let event = event(&body.event)?;
    let callbacks = match body.callbacks {
        None => None,
        Some(specs) => {
            let list = FileCallback::validate_list(specs)
                .map_err(|e| ApiError::bad_request("bad_callback", e.to_string()))?;
            for cb in &list {
                check_deliverable(&cb.callback, rules)?;
            }
            Some(Arc::from(list))
        }
    };
    Ok(Input::Change(Change {
        file,
        event,
        snapshot: body.file,
        callbacks,
    }))
}

/// One change from a getFileInfo `<result>` document; the project and event come from the
/// query string, the file id from the document's `<id>`.
pub fn xml_change(
    body: &[u8],
    project_param: Option<&str>,
    event_param: Option<&str>,
) -> Result<Input, ApiError> {
    let project = project(project_param.ok_or_else(|| {
        ApiError::bad_request(
            "bad_id",
            "an XML change needs ?project=…&event=… in the URL",
        )
    })?)?;
    let event = event(event_param.ok_or_else(|| {
        ApiError::bad_request("unknown_event", "an XML change needs ?event=… in the URL")
    })?)?;
    let snapshot =
        parse_result_xml(body).map_err(|e| ApiError::bad_request("bad_xml", e.to_string()))?;
    let id = snapshot.get("id").ok_or_else(|| {
        ApiError::bad_request("bad_xml", "the <result> document has no <id> field")
    })?;
    let file = FileKey::new(project, file_id(id.trim())?);
    Ok(Input::Change(Change {
        file,
        event,
        snapshot,
        callbacks: None,
    }))
}

/// A batch: one JSON change a line (blank lines skipped). All or nothing: the first bad line
/// refuses the whole batch, naming its number.
/// A line longer than `max_line` bytes is refused, as a single change that size would be.
pub fn ndjson_batch(body: &[u8], rules: Rules, max_line: usize) -> Result<Vec<Input>, ApiError> {
    // UTF-8 is checked once for the whole body, a word at a time on ASCII, and lines are
    // parsed as `str`: serde_json then skips its own check of every string, which was a
    // tenth of parsing a batch.
    let body = std::str::from_utf8(body).map_err(|e| {
        let line = 1 + memchr::memchr_iter(b'\n', &body[..e.valid_up_to()]).count();
        ApiError::bad_request(
            "bad_json",
            format!("not UTF-8 (at byte {} of the batch)", e.valid_up_to()),
        )
        .at_line(line)
    })?;
    let mut inputs = Vec::new();
    // memchr finds the line ends a word at a time; a byte-by-byte split of a 2 MB batch was
    // a tenth of parsing it.
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', body.as_bytes()).chain(std::iter::once(body.len()));
    for (i, end) in ends.enumerate() {
        // Line ends are ASCII, so these are character boundaries.
        let line = &body[start..end];
        start = end + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.bytes().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        if line.len() > max_line {
            return Err(ApiError::new(
                hyper::StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the line is {} bytes, larger than the limit of {max_line} bytes for one change",
                    line.len()
                ),
            )
            .at_line(i + 1));
        }
        let parsed = parse_change(line)
            .map_err(|e| ApiError::bad_request("bad_json", e.to_string()).at_line(i + 1))?;
        let input = change_from(parsed, rules).map_err(|e| e.at_line(i + 1))?;
        inputs.push(input);
    }
    if inputs.is_empty() {
        return Err(ApiError::bad_request(
            "bad_json",
            "the batch holds no change",
        ));
    }
    Ok(inputs)
}

/// A project callback from its JSON configuration.
pub fn callback(body: &[u8], rules: Rules) -> Result<Callback, ApiError> {
    let spec: CallbackSpec = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?;
    let cb = spec
        .validate()
        .map_err(|e| ApiError::bad_request("bad_callback", e.to_string()))?;
    check_deliverable(&cb, rules)?;
    Ok(cb)
}

/// Warnings about a callback that is valid but, as cbd runs, will not be delivered: its URL's
/// host is an address the target policy refuses ([`non_public_reason`]) and cbd runs without
/// `--allow-private-targets`. The callback is still taken (the flag may be turned on later;
/// a record of the put is worth keeping), so the PUT says so rather than refusing.
///
/// Only what is known without the network is looked at — an IP literal, or `localhost` — so
/// a PUT never waits on DNS. A name is checked on every address it resolves to at each
/// connect (`cb_dispatcher::target`), which is the check that counts: the warning is a
/// courtesy that catches the common mistake, not the policy.
pub fn target_warnings(cb: &Callback, rules: Rules) -> Vec<String> {
    if rules.allow_private_targets {
        return Vec::new();
    }
    let Target::Http(url) = &cb.target else {
        return Vec::new();
    };
    // Parsed as the deliverer parses it, so the host is the one it will connect to.
    let Some(host) = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
    else {
        return Vec::new();
    };
    // `[::1]` arrives bracketed.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let reason = match bare.parse::<IpAddr>() {
        Ok(ip) => non_public_reason(ip),
        Err(_)
            if bare.eq_ignore_ascii_case("localhost")
                || bare.eq_ignore_ascii_case("localhost.") =>
        {
            Some("loopback")
        }
        Err(_) => None,
    };
    reason
        .map(|reason| {
            format!(
                "the callback's host {bare} is {reason}: cbd delivers there only when started \
                 with --allow-private-targets, and without it every attempt ends target_refused"
            )
        })
        .into_iter()
        .collect()
}

fn check_deliverable(cb: &Callback, rules: Rules) -> Result<(), ApiError> {
    if let Target::Mail(addr) = &cb.target {
        if !rules.smtp {
            return Err(ApiError::bad_request(
                "bad_callback",
                format!("mailto:{addr} needs an SMTP relay: start cbd with --smtp HOST:PORT"),
            ));
        }
        if let Err(e) = cb_dispatcher::mail::recipient(addr) {
            return Err(ApiError::bad_request(
                "bad_callback",
                format!("mailto:{addr} is not an address the SMTP client can send to: {e}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        smtp: false,
        allow_private_targets: false,
    };

    /// A `mailto:` address the SMTP client cannot send to is refused when the callback is
    /// set (it would fail every attempt for two days), project or per-file alike.
    #[test]
    fn mail_addresses_are_checked_as_the_smtp_client_takes_them() {
        let smtp = Rules {
            smtp: true,
            ..RULES
        };
        for ok in ["ops@example.org", "ops@[192.0.2.1]"] {
            let body = format!(r#"{{"url":"mailto:{ok}"}}"#);
            assert!(callback(body.as_bytes(), smtp).is_ok(), "{ok}");
        }
        for bad in ["a..b@example.org", ".a@example.org", "a@-example-.org"] {
            let body = format!(r#"{{"url":"mailto:{bad}"}}"#);
            let e = callback(body.as_bytes(), smtp).expect_err(bad);
            assert_eq!(e.code, "bad_callback", "{bad}");
        }
        let change = br#"{"project":"p","file_id":"1","event":"published","file":{},
            "callbacks":[{"url":"mailto:a..b@example.org"}]}"#;
        let e = json_change(change, smtp).err().unwrap();
        assert!(e.detail.contains("SMTP client"), "{}", e.detail);
    }

    /// A PUT of a callback the target policy will refuse is taken with a warning that says
    /// why and what to do; a public or merely named host gets none (no DNS at PUT), and
    /// `--allow-private-targets` silences it.
    #[test]
    fn callbacks_to_refused_addresses_are_warned_of() {
        let warnings = |url: &str, rules: Rules| {
            let body = format!(r#"{{"url":"{url}"}}"#);
            target_warnings(&callback(body.as_bytes(), rules).expect(url), rules)
        };
        for (url, reason) in [
            (
                "http://127.0.0.1:9000/cb",
                "127.0.0.1 is loopback (127.0.0.0/8)",
            ),
            ("https://10.1.2.3/cb", "10.1.2.3 is private (10.0.0.0/8)"),
            ("http://[::1]:8080/cb", "::1 is loopback (::1)"),
            ("http://LocalHost:9000/cb", "LocalHost is loopback"),
        ] {
            let w = warnings(url, RULES);
            assert_eq!(w.len(), 1, "{url}: {w:?}");
            assert!(w[0].contains(reason), "{url}: {}", w[0]);
            assert!(w[0].contains("--allow-private-targets"), "{}", w[0]);
            let allowed = Rules {
                allow_private_targets: true,
                ..RULES
            };
            assert_eq!(warnings(url, allowed), Vec::<String>::new(), "{url}");
        }
        for url in [
            "https://cms.example.com/cb",
            "http://93.184.215.14/cb",
            "http://localhost.example.com/cb",
        ] {
            assert_eq!(warnings(url, RULES), Vec::<String>::new(), "{url}");
        }
        let mail = Rules {
            smtp: true,
            ..RULES
        };
        assert_eq!(
            warnings("mailto:ops@example.org", mail),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_batch_that_is_not_utf8_names_the_line() {
        let good = br#"{"project":"p","file_id":"1","event":"rated","file":{"t":"caf\u00e9"}}"#;
        let mut body = [&good[..], b"\n", &good[..], b"\n"].concat();
        assert_eq!(ndjson_batch(&body, RULES, usize::MAX).unwrap().len(), 2);
        body.extend_from_slice(b"{\"project\":\"p\",\"file_id\":\"1\",\"event\":\"rated\",\"file\":{\"t\":\"\xff\"}}\n");
        let err = ndjson_batch(&body, RULES, usize::MAX).unwrap_err();
        assert_eq!(err.line, Some(3), "{}", err.detail);
        assert!(err.detail.contains("not UTF-8"), "{}", err.detail);
        let err = ndjson_batch(b"\n\n{", RULES, usize::MAX).unwrap_err();
        assert_eq!(err.line, Some(3), "{}", err.detail);
    }

    #[test]
    fn json_change_keeps_field_order() {
        let input = json_change(
            br#"{"project":"p","file_id":"556114","event":"rated","file":{"z":"1","a":"2"}}"#,
            RULES,
        )
        .unwrap();
        let Input::Change(c) = input else { panic!() };
        assert_eq!(c.file.to_string(), "p/556114");
        assert_eq!(
            c.snapshot.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["z", "a"]
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let cases: &[(&[u8], &str)] = &[
            (b"{", "bad_json"),
            (br#"{"project":"p","file_id":"1","event":"exploded","file":{}}"#, "unknown_event"),
            (br#"{"project":"p q","file_id":"1","event":"rated","file":{}}"#, "bad_id"),
            (br#"{"project":"p","file_id":"1/2","event":"rated","file":{}}"#, "bad_id"),
            (br#"{"project":"p","file_id":"1","event":"rated","file":{},"extra":1}"#, "bad_json"),
            (br#"{"project":"p","file_id":"1","event":"published","file":{},"callbacks":[{"url":"mailto:a@b.c"}]}"#, "bad_callback"),
            (br#"{"project":"p","file_id":"1","event":"published","file":{},"callbacks":[{"url":"http://x/","headers":[{"name":"X","value":"a\r\nb"}]}]}"#, "bad_callback"),
        ];
        for (body, code) in cases {
            let e = json_change(body, RULES).err().unwrap();
            assert_eq!(
                e.code,
                *code,
                "{}: {}",
                String::from_utf8_lossy(body),
                e.detail
            );
        }
    }

    /// A batch line is held to the size limit of a single change.
    #[test]
    fn a_batch_line_over_the_change_limit_is_refused() {
        let line = br#"{"project":"p","file_id":"1","event":"rated","file":{"t":"x"}}"#;
        let body = [&line[..], b"\n", &line[..]].concat();
        assert_eq!(ndjson_batch(&body, RULES, line.len()).unwrap().len(), 2);
        let e = ndjson_batch(&body, RULES, line.len() - 1).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.code, e.line),
            (413, "too_large", Some(1))
        );
    }

    #[test]
    fn batch_names_the_bad_line() {
        let good = br#"{"project":"p","file_id":"1","event":"rated","file":{}}"#;
        let mut body = Vec::new();
        body.extend_from_slice(good);
        body.extend_from_slice(b"\n\n");
        body.extend_from_slice(good);
        body.extend_from_slice(b"\n{oops\n");
        let e = ndjson_batch(&body, RULES, usize::MAX).err().unwrap();
        assert_eq!(e.line, Some(4));
        body.truncate(body.len() - 7);
        assert_eq!(ndjson_batch(&body, RULES, usize::MAX).unwrap().len(), 2);
        // CRLF line ends, no final newline, and a last line that is bad.
        let crlf = [&good[..], b"\r\n", &good[..], b"\r\n", &good[..]].concat();
        assert_eq!(ndjson_batch(&crlf, RULES, usize::MAX).unwrap().len(), 3);
        let last_bad = [&good[..], b"\n", b"{oops"].concat();
        assert_eq!(
            ndjson_batch(&last_bad, RULES, usize::MAX)
                .err()
                .unwrap()
                .line,
            Some(2)
        );
        assert!(
            ndjson_batch(b"\n \n", RULES, usize::MAX).is_err(),
            "no change at all"
        );
    }

    #[test]
    fn xml_change_takes_the_id_from_the_document() {
        let body = cb_core::render::fixtures::SEED_001_XML.as_bytes();
        let Input::Change(c) = xml_change(body, Some("newzulu"), Some("rated")).unwrap() else {
            panic!()
        };
        assert_eq!(c.file.file_id.as_str(), "556114");
        assert_eq!(c.snapshot.len(), 52);
        assert_eq!(
            xml_change(body, None, Some("rated")).err().unwrap().code,
            "bad_id"
        );
        let dtd =
            b"<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x \"y\">]><result><id>1</id></result>";
        assert_eq!(
            xml_change(dtd, Some("p"), Some("rated"))
                .err()
                .unwrap()
                .code,
            "bad_xml"
        );
    }
}
