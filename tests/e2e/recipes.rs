//! The seed platforms' callback styles (docs/recipes.md), each reproduced from configuration
//! alone against the real daemon, plus Standard Webhooks signing: every test asserts the
//! exact request the receiver gets.

use std::time::Duration;

use serde_json::json;

use crate::support::{Cbd, Received, Receiver};

/// The Standard Webhooks specification's example secret, and a second one for rotation.
const OLD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_SECRET: &str = "whsec_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

fn header_map(r: &Received) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in &r.headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

#[test]
fn signed_requests_verify_with_the_reference_library_during_a_rotation() {
    let receiver = Receiver::start();
    let cbd = Cbd::start(&["--allow-private-targets"]);
    // The XML POST signs its body. A GET's payload is its query, which a signature would
    // not cover: refused.
    cbd.put_callback(
        "p",
        "post",
        json!({"url": receiver.url("/post"), "window_secs": 0, "secret": [NEW_SECRET, OLD_SECRET]}),
    );
    let (status, v) = cbd.json(
        "PUT",
        "/v1/projects/p/callbacks/get",
        Some(&json!({"url": receiver.url("/get"), "method": "GET", "secret": OLD_SECRET})),
    );
    assert_eq!(status, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("unsigned"), "{v}");
    cbd.change(
        "p",
        "556114",
        "rated",
        json!({"id": "556114", "status": "3", "title": "Sunset"}),
    );
    receiver.wait_for_count(1, Duration::from_secs(10));

    // The standardwebhooks crate (the specification's reference library for Rust) checks
    // the signature and that the timestamp is within 5 minutes of now.
    let new = standardwebhooks::Webhook::new(NEW_SECRET).unwrap();
    let old = standardwebhooks::Webhook::new(OLD_SECRET).unwrap();
    let other =
        standardwebhooks::Webhook::new("whsec_AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=")
            .unwrap();
    for r in receiver.received() {
        let headers = header_map(&r);
        let id = r.header("webhook-id").unwrap();
        assert!(id.starts_with("msg_"), "{id}");
        let signatures = r.header("webhook-signature").unwrap();
        assert!(
            other.verify(&r.body, &headers).is_err(),
            "a third secret does not verify"
        );
        show(&r);
        assert_eq!(
            signatures.split(' ').count(),
            2,
            "one signature per secret: {signatures}"
        );
        new.verify(&r.body, &headers)
            .expect("the new secret verifies");
        old.verify(&r.body, &headers)
            .expect("the old secret still verifies");
        let mut tampered = r.body.clone();
        tampered[0] ^= 1;
        assert!(
            old.verify(&tampered, &headers).is_err(),
            "the body is signed"
        );
    }

    // The API shows which secrets are in force, never the secrets.
    let shown = cbd.get("/v1/projects/p/callbacks/post");
    let text = shown.to_string();
    assert!(
        !text.contains("MfKQ9r8G") && !text.contains("BwcHBwcH"),
        "{text}"
    );
    assert_eq!(
        shown["callback"]["secret"].as_array().map(Vec::len),
        Some(2),
        "{text}"
    );
    assert!(shown["callback"]["secret"][0]
        .as_str()
        .unwrap()
        .starts_with("whsec_… (sha256 "));
    for view in [
        "/v1/projects/p/callbacks",
        "/v1/files/p/556114",
        "/v1/files/p/556114/history",
    ] {
        let text = cbd.get(view).to_string();
        assert!(
            !text.contains("MfKQ9r8G") && !text.contains("BwcHBwcH"),
            "{view} shows a secret: {text}"
        );
    }
}

/// Prints a request as the receiver got it (`--nocapture` shows the captures that
/// docs/recipes.md quotes).
fn show(r: &Received) {
    println!("{} {}", r.method, r.uri);
    for (n, v) in &r.headers {
        println!("{n}: {v}");
    }
    if !r.body.is_empty() {
        println!("\n{}", String::from_utf8_lossy(&r.body));
    }
    println!("----");
}

fn requests_to(receiver: &Receiver, path_prefix: &str) -> Vec<Received> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.uri.starts_with(path_prefix))
        .collect()
}

/// Filemobile / Newzulu / New Spark (seeds 000–002): the getFileInfo `<result>` as an XML
/// POST, for the four triggers, at most once per window, carrying the latest state.
#[test]
fn recipe_filemobile_xml_post_of_the_getfileinfo_result() {
    let receiver = Receiver::start();
    let cbd = Cbd::start(&["--allow-private-targets"]);
    // The recipe: the defaults are the platform's (POST, xml, every field, 60 s); the
    // test shortens the window to 2 s.
    cbd.put_callback(
        "newzulu",
        "site",
        json!({"url": receiver.url("/yourcallback.py"),
               "events": ["rated", "moderated", "transcoded", "externalid"],
               "window_secs": 2}),
    );
    let defaults = cbd.get("/v1/projects/newzulu/callbacks/site")["callback"].clone();
    assert_eq!(
        (defaults["method"].as_str(), defaults["format"].as_str()),
        (Some("POST"), Some("xml"))
    );
    assert_eq!(defaults["fields"], serde_json::Value::Null, "every field");
    // The platform's 60 s is the default; seed 002's 5-minute variant is one field.
    let (status, v) = cbd.json(
        "PUT",
        "/v1/projects/filemobile/callbacks/site",
        Some(&json!({"url": receiver.url("/other")})),
    );
    assert_eq!(
        (status, v["callback"]["window_secs"].as_u64()),
        (200, Some(60))
    );
    let (status, v) = cbd.json(
        "PUT",
        "/v1/projects/filemobile/callbacks/site",
        Some(&json!({"url": receiver.url("/other"), "window_secs": 300})),
    );
    assert_eq!(
        (status, v["callback"]["window_secs"].as_u64()),
        (200, Some(300))
    );

    // The seed's own sample, posted as is, for each trigger within one window.
    let xml = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/examples/getFileInfo-556114.xml"
    ))
    .unwrap();
    let mut last = 0;
    for event in ["rated", "moderated", "transcoded", "externalid"] {
        let (status, text) = cbd.call(
            "POST",
            &format!("/v1/changes?project=newzulu&event={event}"),
            Some("application/xml"),
            Some(&xml),
        );
        assert_eq!(status, 202, "{text}");
        last = serde_json::from_str::<serde_json::Value>(&text).unwrap()["seq"]
            .as_u64()
            .unwrap();
    }
    // A change of another kind updates nothing a Filemobile site is told about.
    cbd.change("newzulu", "777", "deleted", json!({"id": "777"}));
    receiver.wait_for_count(1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(2500));
    let got = receiver.received();
    assert_eq!(
        got.len(),
        1,
        "one request per window, none for the filtered change"
    );
    let r = &got[0];
    show(r);
    assert_eq!(
        (r.method.as_str(), r.uri.as_str()),
        ("POST", "/yourcallback.py")
    );
    assert_eq!(r.header("content-type"), Some("application/xml"));
    assert_eq!(r.version(), last, "the latest of the four changes");
    let expected: Vec<(String, String)> = cb_core::render::fixtures::SEED_001_FIELDS
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        r.xml_fields(),
        expected,
        "the seed's <result>, field for field, in order"
    );
}

/// Screen9 "Uploads" (seed 003): a GET with `mediaid, status, title, userid, message` as
/// query parameters; only a 2xx counts, anything else is retried (48 h by default).
#[test]
fn recipe_screen9_uploads_get_with_query_parameters() {
    let receiver = Receiver::start();
    receiver.script([crate::support::Reply::Status(
        302,
        vec![("location", "/elsewhere".to_owned())],
    )]);
    let cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "screen9",
        "cms",
        json!({"url": receiver.url("/"), "method": "GET",
               "fields": ["status", "userid=uid", "message", "mediaid=id", "title"],
               "events": ["uploaded", "cloned", "live_registered"],
               "window_secs": 0, "backoff_secs": [1]}),
    );
    let shown = cbd.get("/v1/projects/screen9/callbacks/cms")["callback"].clone();
    assert_eq!(shown["retry_for_secs"], 172_800, "retried for up to 48 h");
    let media = json!({"id": "hAHlHXzOLgOQI2La-hWFpg", "status": "success",
                       "uid": "rzLmShSpK-7kWkqh2oVCLA", "message": "", "title": "Video title",
                       "category": "news"});
    cbd.change("screen9", "hAHlHXzOLgOQI2La-hWFpg", "uploaded", media);
    // Edits are not "Uploads": filtered.
    cbd.change(
        "screen9",
        "other",
        "metadata_edited",
        json!({"id": "other", "status": "success"}),
    );
    receiver.wait_for_count(2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let got = receiver.received();
    assert_eq!(
        got.len(),
        2,
        "the 302 is a failure and is retried; nothing for the edit"
    );
    for r in &got {
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.uri,
            "/?status=success&userid=rzLmShSpK-7kWkqh2oVCLA&message=&mediaid=hAHlHXzOLgOQI2La-hWFpg&title=Video+title",
            "the seed's URL exactly"
        );
        assert!(r.body.is_empty());
    }
    show(&got[1]);
    cbd.wait_for("sent", Duration::from_secs(5), || {
        cbd.machine("screen9", "hAHlHXzOLgOQI2La-hWFpg", "cms")["state"] == "sent"
    });
}

/// Screen9 "Uploads and updates" (seed 003): edits and deletions too, with the media id
/// and its status (`status=deleted&mediaid=…`).
#[test]
fn recipe_screen9_uploads_and_updates() {
    let receiver = Receiver::start();
    let cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "screen9",
        "cms",
        json!({"url": receiver.url("/"), "method": "GET",
               "fields": ["status", "mediaid=id"],
               "events": ["uploaded", "cloned", "live_registered", "metadata_edited", "deleted"],
               "window_secs": 0}),
    );
    cbd.change(
        "screen9",
        "-YBpbhPLZ7vQJnvYVBk-wh",
        "deleted",
        json!({"id": "-YBpbhPLZ7vQJnvYVBk-wh", "status": "deleted", "title": "Old clip"}),
    );
    cbd.change(
        "screen9",
        "hAHlHXzOLgOQI2La-hWFpg",
        "metadata_edited",
        json!({"id": "hAHlHXzOLgOQI2La-hWFpg", "status": "success", "title": "New title"}),
    );
    // Filemobile's events are not Screen9's: filtered.
    cbd.change(
        "screen9",
        "x",
        "rated",
        json!({"id": "x", "status": "success"}),
    );
    receiver.wait_for_count(2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let mut uris: Vec<String> = receiver.received().iter().map(|r| r.uri.clone()).collect();
    uris.sort();
    assert_eq!(
        uris,
        [
            "/?status=deleted&mediaid=-YBpbhPLZ7vQJnvYVBk-wh",
            "/?status=success&mediaid=hAHlHXzOLgOQI2La-hWFpg",
        ]
    );
    show(&receiver.received()[0]);
}

/// The LightFlow asset of seed 004, as a snapshot of strings.
fn asset(status: &str) -> serde_json::Value {
    json!({
        "uuid": "6b48fbce-cd10-459c-b397-5673e4bbafaf",
        "assetName": "T1S03",
        "inputUrl": "https://storage.googleapis.com/T1S03.mp4",
        "username": "jonhdoe@epiclabs.io",
        "startDate": "2019-02-14T20:32:48.898Z",
        "endDate": "2019-02-14T20:43:11.825Z",
        "status": status,
        "metadata": "{}",
        "duration": "120",
        "assetUrl": "https://dashboard.lightflow.media/perceptual-quality/6b48fbce-cd10-459c-b397-5673e4bbafaf",
        "thumbnail": "http://video.lightflow.media/thumb/6b48fbce-cd10-459c-b397-5673e4bbafaf?time=50&width=320"
    })
}

const LIGHTFLOW_FIELDS: [&str; 11] = [
    "uuid",
    "assetName",
    "inputUrl",
    "username",
    "startDate",
    "endDate",
    "status",
    "metadata:json",
    "duration:number",
    "assetUrl",
    "thumbnail",
];

/// LightFlow (seed 004): callbacks given with the asset, for that asset only — a JSON POST
/// and PUT with the caller's headers, a GET with `status` and `endDate`, and a mail; on
/// success and failure by default, on encoding progress only when asked.
#[test]
fn recipe_lightflow_per_file_callbacks() {
    let receiver = Receiver::start();
    let sink = crate::support::SmtpSink::start(false);
    let relay = sink.addr.to_string();
    let cbd = Cbd::start(&["--allow-private-targets", "--smtp", &relay]);
    let callbacks = json!([
        {"name": "ingest", "url": receiver.url("/ingest"), "method": "POST", "format": "json",
         "fields": LIGHTFLOW_FIELDS, "window_secs": 0,
         "headers": [{"name": "Authorization", "value": "Bearer <JWT TOKEN>"},
                     {"name": "X-Custom-Header", "value": "X-Custom-Header-Value"}]},
        {"name": "update", "url": receiver.url("/assets/6b48fbce"), "method": "PUT",
         "format": "json", "fields": LIGHTFLOW_FIELDS, "window_secs": 0, "onFailure": false},
        {"name": "status", "url": receiver.url("/status"), "method": "GET",
         "fields": ["status", "endDate"], "window_secs": 0, "onProgressEncoding": true},
        {"name": "mail", "url": "mailto:johndoe@epiclabs.io", "format": "json",
         "fields": LIGHTFLOW_FIELDS, "window_secs": 0}
    ]);
    let asset_id = "6b48fbce-cd10-459c-b397-5673e4bbafaf";
    let (status, v) = cbd.json(
        "POST",
        "/v1/changes",
        Some(
            &json!({"project": "lightflow", "file_id": asset_id, "event": "published",
                     "file": asset("finished"), "callbacks": callbacks}),
        ),
    );
    assert_eq!(status, 202, "{v}");
    let published = v["seq"].as_u64().unwrap();
    // Another asset without callbacks: the first asset's callbacks are not its.
    cbd.change("lightflow", "another", "published", asset("finished"));
    receiver.wait_for_count(3, Duration::from_secs(10));
    cbd.wait_for("the mail", Duration::from_secs(10), || {
        !sink.messages().is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    let got = receiver.received();
    assert_eq!(got.len(), 3, "POST, PUT and GET for the first asset only");

    let expected_body = json!({
        "uuid": asset_id, "assetName": "T1S03",
        "inputUrl": "https://storage.googleapis.com/T1S03.mp4",
        "username": "jonhdoe@epiclabs.io", "startDate": "2019-02-14T20:32:48.898Z",
        "endDate": "2019-02-14T20:43:11.825Z", "status": "finished", "metadata": {},
        "duration": 120,
        "assetUrl": "https://dashboard.lightflow.media/perceptual-quality/6b48fbce-cd10-459c-b397-5673e4bbafaf",
        "thumbnail": "http://video.lightflow.media/thumb/6b48fbce-cd10-459c-b397-5673e4bbafaf?time=50&width=320"
    });
    let post = &requests_to(&receiver, "/ingest")[0];
    show(post);
    assert_eq!(post.method, "POST");
    assert_eq!(post.header("content-type"), Some("application/json"));
    assert_eq!(post.header("authorization"), Some("Bearer <JWT TOKEN>"));
    assert_eq!(
        post.header("x-custom-header"),
        Some("X-Custom-Header-Value")
    );
    assert_eq!(post.version(), published);
    let body: serde_json::Value = serde_json::from_slice(&post.body).unwrap();
    assert_eq!(body, expected_body, "seed 004's body shape");
    let put = &requests_to(&receiver, "/assets/")[0];
    assert_eq!(put.method, "PUT");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&put.body).unwrap(),
        expected_body
    );
    assert_eq!(
        put.header("authorization"),
        None,
        "headers are per callback"
    );
    let get = &requests_to(&receiver, "/status")[0];
    show(get);
    assert_eq!(get.method, "GET");
    assert_eq!(
        get.uri,
        "/status?status=finished&endDate=2019-02-14T20%3A43%3A11.825Z"
    );
    let raw = &sink.messages()[0];
    println!("{raw}\n----");
    let mail = mailparse::parse_mail(raw.as_bytes()).unwrap();
    let header = |name: &str| {
        use mailparse::MailHeaderMap;
        mail.headers.get_first_value(name)
    };
    assert_eq!(header("To").as_deref(), Some("johndoe@epiclabs.io"));
    assert_eq!(
        header("Subject"),
        Some(format!(
            "[cb] lightflow/{asset_id} published (version {published})"
        ))
    );
    assert_eq!(mail.ctype.mimetype, "application/json");
    let body: serde_json::Value = serde_json::from_str(&mail.get_body().unwrap()).unwrap();
    assert_eq!(body, expected_body, "the rendered payload is the body");

    // Encoding progress: only the callback that asked for it. A failure: all but `update`.
    cbd.change(
        "lightflow",
        asset_id,
        "encoding_progress",
        asset("encoding"),
    );
    receiver.wait_for_count(4, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.count(), 4);
    assert_eq!(
        receiver.received()[3].uri,
        "/status?status=encoding&endDate=2019-02-14T20%3A43%3A11.825Z"
    );
    cbd.change("lightflow", asset_id, "failed", asset("error"));
    receiver.wait_for_count(6, Duration::from_secs(10));
    cbd.wait_for("the second mail", Duration::from_secs(10), || {
        sink.messages().len() == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut last: Vec<String> = receiver.received()[4..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.uri.split('?').next().unwrap()))
        .collect();
    last.sort();
    assert_eq!(
        last,
        ["GET /status", "POST /ingest"],
        "no PUT: its onFailure is false"
    );
}

/// Rule 2: a filtered event triggers nothing, but its snapshot is still the file's latest,
/// so a delivery that was due anyway carries it.
#[test]
fn filters_drop_the_trigger_not_the_state() {
    let receiver = Receiver::start();
    let cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "screen9",
        "cms",
        json!({"url": receiver.url("/"), "method": "GET", "fields": ["mediaid=id", "title"],
               "events": ["uploaded"], "window_secs": 1}),
    );
    cbd.change(
        "screen9",
        "m1",
        "uploaded",
        json!({"id": "m1", "title": "First"}),
    );
    let edit = cbd.change(
        "screen9",
        "m1",
        "metadata_edited",
        json!({"id": "m1", "title": "Edited"}),
    );
    receiver.wait_for_count(1, Duration::from_secs(10));
    let r = &receiver.received()[0];
    assert_eq!(
        r.uri, "/?mediaid=m1&title=Edited",
        "the filtered edit's state is delivered"
    );
    assert_eq!(r.version(), edit);
    // Alone, an edit sends nothing.
    cbd.change(
        "screen9",
        "m1",
        "metadata_edited",
        json!({"id": "m1", "title": "Again"}),
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(receiver.count(), 1);
}
