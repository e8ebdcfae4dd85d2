//! The `json` format: one flat JSON object, `{"param":"value",…}`, keys in projection order,
//! every value a string, no whitespace.
//!
//! String escaping is serde_json's (quote, backslash and control characters; everything else
//! verbatim UTF-8), which is fixed by the JSON grammar plus serde_json's choice of short
//! escapes, so the bytes are stable across runs and releases. Keys cannot repeat: snapshot
//! names are unique and a validated callback rejects duplicate output names.

use super::Projected;

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
    for (i, (name, value)) in fields.pairs().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(&mut out, name);
        out.push(b':');
        write_string(&mut out, value);
    }
    out.push(b'}');
    out
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
}
