//! The `query` format: the projected fields as `application/x-www-form-urlencoded` pairs in
//! projection order, e.g. Screen9's
//! `status=success&userid=rzLmShSpK-7kWkqh2oVCLA&message=&mediaid=hAHlHXzOLgOQI2La-hWFpg&title=Video+title`.
//!
//! Encoding is the WHATWG form serializer's (`form_urlencoded`): space becomes `+`, and every
//! byte outside `*-._` and ASCII alphanumerics is percent-encoded, so the result is plain ASCII
//! that can be appended to any URL (see [`super::request_url`]).

use super::Projected;

/// Renders the projected fields as a form-urlencoded query string (without `?`).
pub(crate) fn render(fields: Projected<'_>) -> Vec<u8> {
    // `n=v&` is 2 bytes around name and value; percent-encoding may grow it later.
    let estimate: usize = fields
        .pairs()
        .map(|(name, value)| name.len() + value.len() + 2)
        .sum();
    let mut query = form_urlencoded::Serializer::new(String::with_capacity(estimate));
    for (name, value) in fields.pairs() {
        query.append_pair(name, value);
    }
    query.finish().into_bytes()
}

#[cfg(test)]
mod tests {
    use crate::config::Callback;
    use crate::snapshot::Snapshot;

    fn render_get(snapshot: &Snapshot, fields: &str) -> Vec<u8> {
        let c = Callback::from_json(&format!(
            r#"{{"url":"http://cms.example.com","method":"GET","fields":{fields}}}"#
        ))
        .unwrap();
        super::super::render(snapshot, &c).bytes
    }

    #[test]
    fn screen9_upload_fields_render_like_the_seed() {
        let snapshot = Snapshot::from_pairs([
            ("title", "Video title"),
            ("id", "hAHlHXzOLgOQI2La-hWFpg"),
            ("message", ""),
            ("uid", "rzLmShSpK-7kWkqh2oVCLA"),
            ("status", "success"),
        ])
        .unwrap();
        assert_eq!(
            render_get(
                &snapshot,
                r#"["status","userid=uid","message","mediaid=id","title"]"#
            ),
            b"status=success&userid=rzLmShSpK-7kWkqh2oVCLA&message=&mediaid=hAHlHXzOLgOQI2La-hWFpg&title=Video+title"
        );
    }

    #[test]
    fn default_get_projection_is_mediaid_status_title() {
        let snapshot = Snapshot::from_pairs([
            ("status", "success"),
            ("id", "abc"),
            ("title", "T"),
            ("other", "x"),
        ])
        .unwrap();
        let c = Callback::from_json(r#"{"url":"http://cms.example.com","method":"GET"}"#).unwrap();
        assert_eq!(
            super::super::render(&snapshot, &c).bytes,
            b"mediaid=abc&status=success&title=T"
        );
    }

    #[test]
    fn reserved_and_non_ascii_characters_are_percent_encoded_and_parse_back() {
        let snapshot = Snapshot::from_pairs([
            ("title", "a&b=c+d e?f#g%h/i"),
            ("name", "エヴァート 😀"),
            ("ctl", "line\r\nnul\u{0}"),
        ])
        .unwrap();
        let bytes = render_get(&snapshot, r#"["title","name","ctl"]"#);
        assert!(bytes.is_ascii());
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            "title=a%26b%3Dc%2Bd+e%3Ff%23g%25h%2Fi&name=%E3%82%A8%E3%83%B4%E3%82%A1%E3%83%BC%E3%83%88+%F0%9F%98%80&ctl=line%0D%0Anul%00"
        );
        let back: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
        let want: Vec<(String, String)> = snapshot
            .iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(back, want);
    }

    #[test]
    fn nothing_projected_renders_an_empty_query() {
        let snapshot = Snapshot::from_pairs([("other", "x")]).unwrap();
        assert_eq!(render_get(&snapshot, r#"["status","mediaid=id"]"#), b"");
    }
}
