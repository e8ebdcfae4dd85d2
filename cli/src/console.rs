//! The operator console (SPEC §6 `GET /`): one static page, its script and its style,
//! compiled into `cbd` (`include_str!`) and served without a token, since they hold no
//! data — everything the page shows it fetches from `/v1/…` with the bearer token the
//! operator types, kept in the tab's `sessionStorage` and sent only as a header.
//!
//! Every answer carries a strict `Content-Security-Policy`: scripts and styles only from
//! these files (no inline script or style, no `eval`), requests only to this origin, no
//! framing, no form submissions. With the script's rule of rendering customer data as text
//! only (`textContent`, never `innerHTML`), a field value like `<img onerror=…>` stays text.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use hyper::{Response, StatusCode};

use crate::api::Body;

/// The page.
pub const PAGE: &str = include_str!("console/index.html");
/// Its script.
pub const SCRIPT: &str = include_str!("console/console.js");
/// Its style.
pub const STYLE: &str = include_str!("console/console.css");

/// The policy every console answer carries. `form-action 'none'`: the forms are handled by
/// the script; should it fail to run, a form must not submit (a token in a URL) anywhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The answer for a console path (`""` is `/`), or `None` if it is not one.
pub fn asset(path: &str) -> Option<Response<Body>> {
    let (content_type, text) = match path {
        "" | "console" => ("text/html; charset=utf-8", PAGE),
        "console.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "console.css" => ("text/css; charset=utf-8", STYLE),
        _ => return None,
    };
    let body = Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never: Infallible| match never {})
        .boxed();
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, content_type)
        .header(CONTENT_SECURITY_POLICY, CSP)
        .header(X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(REFERRER_POLICY, "no-referrer")
        .header(X_FRAME_OPTIONS, "DENY")
        // A new cbd may serve a new console: never a stale script against a newer API.
        .header(CACHE_CONTROL, "no-store")
        .body(body)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cheap guard behind the escaping rule: no HTML parsing of strings, no string
    /// evaluation, and no inline script or style the policy would block anyway.
    #[test]
    fn the_console_never_parses_strings_as_html_or_code() {
        for (name, text) in [("index.html", PAGE), ("console.js", SCRIPT)] {
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "setTimeout(\"",
                "setTimeout('",
                "javascript:",
            ] {
                assert!(!text.contains(banned), "{name} uses {banned}");
            }
        }
        assert!(!PAGE.contains("<script>"), "inline script");
        assert!(!PAGE.contains("style="), "inline style");
        assert!(!PAGE.contains("<style"), "inline style");
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        // No fetch from elsewhere: the only absolute URL is SVG's namespace, a name.
        let script = SCRIPT.replace("http://www.w3.org/2000/svg", "");
        assert!(!script.contains("http://") && !script.contains("https://"));
    }

    #[test]
    fn each_asset_has_its_type_and_the_policy() {
        for (path, ty) in [
            ("", "text/html"),
            ("console", "text/html"),
            ("console.js", "text/javascript"),
            ("console.css", "text/css"),
        ] {
            let r = asset(path).expect(path);
            let h = r.headers();
            assert!(h[CONTENT_TYPE].to_str().unwrap().starts_with(ty), "{path}");
            assert_eq!(h[CONTENT_SECURITY_POLICY], CSP);
            assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[CACHE_CONTROL], "no-store");
        }
        assert!(asset("console.map").is_none());
    }
}
