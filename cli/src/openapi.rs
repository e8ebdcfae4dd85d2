//! The OpenAPI 3.1 description of cbd's HTTP API, served at `GET /v1/openapi.json`, and the
//! test that keeps it complete.
//!
//! The document is hand-written JSON (`openapi.json` beside this file), built into the
//! binary. It is not generated from Rust types because the answers are not made from one
//! set of types a generator could read: they are JSON values built in `view` and `lists`,
//! and the errors one shape with many codes. What keeps the hand-written text honest is
//! checking it against the code: the unit test below reads the routes out of `api.rs`'s
//! own source (the `route` match and `allowed_methods`), so a route added there without a
//! description here fails it; `tests/e2e/openapi.rs` validates the served document with
//! openapi-spec-validator and fuzzes a real cbd against it with schemathesis, which catches
//! an answer the document does not describe.

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// Operations (method, path template) the document describes that this build may not serve
/// yet: they were written down together with the branch that adds them, so the document is
/// complete once both are merged. The completeness test lets them be missing from `api.rs`;
/// the fuzzer skips the ones a running cbd answers `no route` for. Once they are served,
/// empty this list.
pub const AHEAD: &[(&str, &str)] = &[];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    /// A path as the router matches it: one entry a segment, `None` where any value fits.
    type Shape = Vec<Option<String>>;

    /// The text of `src` from `start` up to the next `end`.
    fn between<'a>(src: &'a str, start: &str, end: &str) -> &'a str {
        let from = src
            .find(start)
            .unwrap_or_else(|| panic!("api.rs has no {start:?}"));
        let rest = &src[from..];
        let to = rest
            .find(end)
            .unwrap_or_else(|| panic!("api.rs has no {end:?} after {start:?}"));
        &rest[..to]
    }

    /// The shapes of a slice pattern's inside, `"v1", "log" | "status", p`: one per
    /// alternative.
    fn shapes(pattern: &str) -> Vec<Shape> {
        let mut out: Vec<Shape> = vec![Vec::new()];
        for segment in pattern.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let choices: Vec<Option<String>> = segment
                .split('|')
                .map(str::trim)
                .map(|c| {
                    c.strip_prefix('"')
                        .map(|c| c.trim_end_matches('"').to_owned())
                })
                .collect();
            out = out
                .into_iter()
                .flat_map(|shape| {
                    choices.iter().map(move |c| {
                        let mut s = shape.clone();
                        s.push(c.clone());
                        s
                    })
                })
                .collect();
        }
        out
    }

    /// The slice patterns (`[...]`) in `text`, each expanded to its shapes.
    fn patterns(text: &str) -> Vec<Shape> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            let close = open + rest[open..].find(']').expect("a ] after each [");
            out.extend(shapes(&rest[open + 1..close]));
            rest = &rest[close + 1..];
        }
        out
    }

    /// What `api::route` dispatches: (method, shape) for each arm of its match.
    fn routed() -> BTreeSet<(String, Shape)> {
        let body = between(
            include_str!("api.rs"),
            "async fn route(",
            "\nfn allowed_methods(",
        );
        let mut out = BTreeSet::new();
        let mut rest = body;
        while let Some(at) = rest.find("(&Method::") {
            rest = &rest[at + "(&Method::".len()..];
            let method = rest[..rest.find(',').expect("(&Method::X, [...])")].to_ascii_lowercase();
            let close = rest.find(']').expect("a slice pattern after the method");
            for shape in patterns(&rest[..=close]) {
                out.insert((method.clone(), shape));
            }
            rest = &rest[close..];
        }
        assert!(out.len() > 10, "read too few routes from api.rs: {out:?}");
        out
    }

    /// What `api::allowed_methods` answers: (method, shape) for each method of each arm.
    fn allowed() -> BTreeSet<(String, Shape)> {
        let body = between(
            include_str!("api.rs"),
            "\nfn allowed_methods(",
            "_ => return None",
        );
        let arms = &body[body.find("match route {").expect("match route {")..];
        let mut out = BTreeSet::new();
        // Arms are `PATTERN => "METHODS",`: split at the arrows, each piece after one is the
        // methods up to their closing quote, then the next arm's pattern.
        let mut pieces = arms.split("=> \"");
        let mut pattern = pieces.next().unwrap_or_default();
        for piece in pieces {
            let (methods, next) = piece.split_once('"').expect("the methods' closing quote");
            for shape in patterns(pattern) {
                for m in methods.split(',') {
                    out.insert((m.trim().to_ascii_lowercase(), shape.clone()));
                }
            }
            pattern = next;
        }
        assert!(
            out.len() > 10,
            "read too few arms from allowed_methods: {out:?}"
        );
        out
    }

    fn shape_of(template: &str) -> Shape {
        template
            .trim_matches('/')
            .split('/')
            .map(|s| match s.starts_with('{') && s.ends_with('}') {
                true => None,
                false => Some(s.to_owned()),
            })
            .collect()
    }

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// (method, path template) of every operation in the document.
    fn described(doc: &Value) -> BTreeSet<(String, String)> {
        let paths = doc["paths"].as_object().expect("paths");
        let mut out = BTreeSet::new();
        for (template, item) in paths {
            for (key, _) in item.as_object().expect("a path item").iter() {
                if METHODS.contains(&key.as_str()) {
                    out.insert((key.clone(), template.clone()));
                }
            }
        }
        out
    }

    fn find_described<'a>(
        described: &'a BTreeSet<(String, String)>,
        method: &str,
        shape: &Shape,
    ) -> Option<&'a String> {
        described
            .iter()
            .find(|(m, t)| m == method && shape_of(t) == *shape)
            .map(|(_, t)| t)
    }

    fn show(shape: &Shape) -> String {
        let segments: Vec<&str> = shape.iter().map(|s| s.as_deref().unwrap_or("*")).collect();
        format!("/{}", segments.join("/"))
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }

    /// Every route the router serves is described with each method it takes; HEAD, which
    /// the router answers for every GET, is said once in the document's description.
    #[test]
    fn every_served_route_is_described() {
        let doc = document();
        let described = described(&doc);
        let mut missing = Vec::new();
        for (method, shape) in routed().iter().chain(allowed().iter()) {
            if method == "head" {
                continue;
            }
            if find_described(&described, method, shape).is_none() {
                missing.push(format!("{} {}", method.to_uppercase(), show(shape)));
            }
        }
        assert!(
            missing.is_empty(),
            "api.rs serves routes cli/src/openapi.json does not describe: {missing:?}"
        );
    }

    /// Every route the router dispatches is one `allowed_methods` knows, so a wrong method
    /// on it is a 405 with `Allow` rather than a 404; and each GET there also takes HEAD.
    #[test]
    fn the_router_and_allowed_methods_agree() {
        let allowed = allowed();
        for (method, shape) in routed() {
            assert!(
                allowed.contains(&(method.clone(), shape.clone())),
                "{} {} is routed but not in allowed_methods",
                method.to_uppercase(),
                show(&shape)
            );
        }
        for (method, shape) in &allowed {
            if method == "get" {
                assert!(
                    allowed.contains(&("head".to_owned(), shape.clone())),
                    "{} takes GET but not HEAD in allowed_methods",
                    show(shape)
                );
            }
        }
    }

    /// Every operation described is served, but those written down ahead of their code.
    #[test]
    fn every_described_route_is_served() {
        let doc = document();
        let routed = routed();
        let mut unserved = Vec::new();
        for (method, template) in described(&doc) {
            let served = routed.contains(&(method.clone(), shape_of(&template)));
            let ahead = AHEAD.contains(&(method.as_str(), template.as_str()));
            if !served && !ahead {
                unserved.push(format!("{} {template}", method.to_uppercase()));
            }
        }
        assert!(
            unserved.is_empty(),
            "openapi.json describes routes api.rs does not serve: {unserved:?}"
        );
        let described = described(&doc);
        for (method, template) in AHEAD {
            assert!(
                described.contains(&(method.to_string(), template.to_string())),
                "AHEAD names {method} {template}, which openapi.json does not describe"
            );
        }
    }

    /// Each operation has a unique operationId and answers; every `/v1` one says it may be
    /// refused 401, and every one that takes a body says it may be too large.
    #[test]
    fn every_operation_is_complete() {
        let doc = document();
        let mut ids = BTreeSet::new();
        for (method, template) in described(&doc) {
            let op = &doc["paths"][&template][&method];
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(!id.is_empty(), "{method} {template} has no operationId");
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {template} has no 2xx answer"
            );
            if template.starts_with("/v1/") {
                assert!(
                    responses.contains_key("401"),
                    "{method} {template} does not say 401"
                );
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "408", "413"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {template} takes a body but does not say {status}"
                    );
                }
            }
        }
    }

    /// Every `$ref` points at something in the document.
    #[test]
    fn every_reference_resolves() {
        fn walk(doc: &Value, v: &Value, bad: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let found = r
                            .strip_prefix('#')
                            .and_then(|pointer| doc.pointer(pointer))
                            .is_some();
                        if !found {
                            bad.push(r.clone());
                        }
                    }
                    m.values().for_each(|v| walk(doc, v, bad));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(doc, v, bad)),
                _ => {}
            }
        }
        let doc = document();
        let mut bad = Vec::new();
        walk(&doc, &doc, &mut bad);
        assert!(bad.is_empty(), "unresolved references: {bad:?}");
    }

    /// A per-file callback takes every field of a project callback as it is (`CallbackSpec`
    /// validates both). The document spells them out in both schemas, as client generators
    /// do not follow a `$ref` into another schema's properties; this keeps the copies equal.
    #[test]
    fn per_file_callbacks_take_the_project_callback_fields() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let project = schemas["CallbackSpec"]["properties"]
            .as_object()
            .expect("CallbackSpec's properties");
        let per_file = &schemas["FileCallbackSpec"]["properties"];
        for (name, schema) in project {
            assert_eq!(
                &per_file[name], schema,
                "FileCallbackSpec's {name} differs from CallbackSpec's"
            );
        }
    }

    /// The source reader finds what the router has, alternatives and wildcards included.
    #[test]
    fn routes_are_read_from_the_source() {
        assert_eq!(
            shapes(r#""v1", "log" | "status", _"#),
            vec![
                vec![Some("v1".to_owned()), Some("log".to_owned()), None],
                vec![Some("v1".to_owned()), Some("status".to_owned()), None],
            ]
        );
        let routed = routed();
        let callbacks = shape_of("/v1/projects/{p}/callbacks/{n}");
        assert!(routed.contains(&("put".to_owned(), callbacks.clone())));
        assert!(routed.contains(&("get".to_owned(), shape_of("/healthz"))));
        let allowed = allowed();
        assert!(allowed.contains(&("delete".to_owned(), callbacks)));
        assert!(allowed.contains(&("head".to_owned(), shape_of("/v1/status"))));
    }
}
