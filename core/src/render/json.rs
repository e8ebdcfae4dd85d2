//! The `json` format: one flat JSON object, `{"param":"value",…}`, keys in projection order,
//! no whitespace. Values are strings unless a `fields` entry gives a type
//! ([`ValueKind`]): then a value of that type is written as its own text, an empty one as
//! `null`, anything else still as a string.
//!
//! String escaping is serde_json's (quote, backslash and control characters; everything else
//! verbatim UTF-8), which is fixed by the JSON grammar plus serde_json's choice of short
//! escapes, so the bytes are stable across runs and releases. Keys cannot repeat: snapshot
//! names are unique and a validated callback rejects duplicate output names.

use super::Projected;
use crate::config::ValueKind;

/// The media type of the `json` format.
pub(crate) const CONTENT_TYPE: &str = "application/json";

/// Renders the projected fields as a JSON object.
pub(crate) fn render(fields: Projected<'_>) -> Vec<u8> {
    // `"n":"v",` is 6 bytes around name and value.
    let estimate: usize = fields
        .pairs()
        .map(|(name, value)| name.len() + value.len() + 6)
        .sum();
    let mut out = Vec::with_capacity(estimate + 2);
    out.push(b'{');
    for (i, (name, value, kind)) in fields.typed_pairs().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(&mut out, name);
        out.push(b':');
        write_value(&mut out, value, kind);
    }
    out.push(b'}');
    out
}

/// Writes `value` as `kind` when it is one (see [`ValueKind`]): its own text for a number,
/// a boolean or JSON, `null` when empty, else a string.
fn write_value(out: &mut Vec<u8>, value: &str, kind: ValueKind) {
    if kind == ValueKind::String {
        return write_string(out, value);
    }
    if value.is_empty() {
        return out.extend_from_slice(b"null");
    }
    let fits = match kind {
        ValueKind::String => false,
        ValueKind::Bool => value == "true" || value == "false",
        ValueKind::Number => {
            value.trim() == value && serde_json::from_str::<serde_json::Number>(value).is_ok()
        }
        ValueKind::Json => {
            value.trim() == value && serde_json::from_str::<serde::de::IgnoredAny>(value).is_ok()
        }
    };
    if fits {
        out.extend_from_slice(value.as_bytes());
    } else {
        write_string(out, value);
    }
}

/// Appends `s` as a JSON string literal, written straight into `out` (no temporary).
fn write_string(out: &mut Vec<u8>, s: &str) {
    // Cannot fail: a `str` always serializes, and writing to a `Vec` never errors.
    serde_json::to_writer(&mut *out, s).expect("a string serializes into a Vec infallibly");
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::seed_001_snapshot;
    use crate::config::Callback;
    use crate::snapshot::Snapshot;

    fn render_json(snapshot: &Snapshot) -> Vec<u8> {
        let c = Callback::from_json(r#"{"url":"http://x.org/","format":"json"}"#).unwrap();
        super::super::render(snapshot, &c).bytes
    }

    #[test]
    fn seed_001_sample_parses_back_to_the_same_fields_in_order() {
        let snapshot = seed_001_snapshot();
        let bytes = render_json(&snapshot);
        // Snapshot's own deserializer keeps document order, unlike serde_json's `Map`.
        let back: Snapshot = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, snapshot);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(r#"{"id":"556114","status":"3","contenttype":"image/jpeg","#),
            "{text}"
        );
        assert!(text.contains(r#","user_firstname":"エヴァート","user_lastname":"ぽつ","url":"","#));
        assert!(
            !text.contains("\", \"") && !text.contains("\": \""),
            "no whitespace"
        );
    }

    #[test]
    fn quotes_backslashes_and_control_characters_are_escaped() {
        let snapshot = Snapshot::from_pairs([
            ("q", "say \"hi\""),
            ("b", r"C:\path\"),
            ("c", "tab\tnl\ncr\rnul\u{0}esc\u{1B}del\u{7F}"),
            ("u", "エヴァート 😀 </script> \u{2028}"),
        ])
        .unwrap();
        let bytes = render_json(&snapshot);
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            "{\"q\":\"say \\\"hi\\\"\",\"b\":\"C:\\\\path\\\\\",\"c\":\"tab\\tnl\\ncr\\rnul\\u0000esc\\u001bdel\u{7F}\",\"u\":\"エヴァート 😀 </script> \u{2028}\"}"
        );
        let back: Snapshot = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, snapshot);
    }

    #[test]
    fn values_are_always_strings_even_when_they_look_like_numbers() {
        let snapshot =
            Snapshot::from_pairs([("id", "556114"), ("rating", "0.00"), ("x", "true")]).unwrap();
        assert_eq!(
            render_json(&snapshot),
            br#"{"id":"556114","rating":"0.00","x":"true"}"#
        );
    }

    #[test]
    fn empty_projection_renders_an_empty_object() {
        assert_eq!(render_json(&Snapshot::default()), b"{}");
    }

    #[test]
    fn output_names_that_are_not_xml_names_are_fine_in_json() {
        let snapshot = Snapshot::from_pairs([("id", "1")]).unwrap();
        let c = Callback::from_json(
            r#"{"url":"http://x.org/","format":"json","fields":["media id=id","a\"b=id"]}"#,
        )
        .unwrap();
        assert_eq!(
            super::super::render(&snapshot, &c).bytes,
            br#"{"media id":"1","a\"b":"1"}"#
        );
    }

    /// LightFlow's POST body (seed 004): strings, a number and an object, from a snapshot
    /// of strings and `fields` with types.
    #[test]
    fn typed_fields_give_the_lightflow_body_shape() {
        let c = Callback::from_json(
            r#"{"url":"https://x.org/","format":"json","fields":["uuid","assetName","status","metadata:json","duration:number","live:bool","size:number","missing:number"]}"#,
        )
        .unwrap();
        let snapshot = Snapshot::from_pairs([
            ("uuid", "6b48fbce-cd10-459c-b397-5673e4bbafaf"),
            ("assetName", "T1S03"),
            ("status", "finished"),
            ("metadata", "{\"season\": 1}"),
            ("duration", "120"),
            ("live", "false"),
            ("size", "about 3 GB"),
        ])
        .unwrap();
        let text = String::from_utf8(super::super::render(&snapshot, &c).bytes).unwrap();
        assert_eq!(
            text,
            r#"{"uuid":"6b48fbce-cd10-459c-b397-5673e4bbafaf","assetName":"T1S03","status":"finished","metadata":{"season": 1},"duration":120,"live":false,"size":"about 3 GB"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["duration"], 120);
        // Empty values are null; values that are not of the type stay strings.
        let empty =
            Snapshot::from_pairs([("uuid", ""), ("metadata", ""), ("duration", " 1")]).unwrap();
        let text = String::from_utf8(super::super::render(&empty, &c).bytes).unwrap();
        assert_eq!(text, r#"{"uuid":"","metadata":null,"duration":" 1"}"#);
    }

    #[test]
    fn types_are_for_json_only_and_must_be_known() {
        for (json, says) in [
            (
                r#"{"url":"https://x.org/","fields":["duration:number"]}"#,
                "format json only",
            ),
            (
                r#"{"url":"https://x.org/","method":"GET","fields":["duration:number"]}"#,
                "format json only",
            ),
            (
                r#"{"url":"https://x.org/","format":"json","fields":["duration:int"]}"#,
                "string, number, bool or json",
            ),
        ] {
            let e = Callback::from_json(json).unwrap_err().to_string();
            assert!(e.contains(says), "{json}: {e}");
        }
        let c = Callback::from_json(r#"{"url":"https://x.org/","format":"json","fields":["len=duration:number","meta=metadata:json","id"]}"#).unwrap();
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(
            back["fields"],
            serde_json::json!(["len=duration:number", "meta=metadata:json", "id"])
        );
    }
}
