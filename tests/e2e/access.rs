//! Who may call the API, and how it is reached: scoped tokens (ingest, read, admin) refused
//! and allowed per route, added and removed with the real `cbctl token` and put in force by
//! SIGHUP; `/metrics` behind `--metrics-auth`; the API over TLS (`--tls-cert`), reached by a
//! client that trusts its CA and by `cbctl --server https://… --ca-file`, its certificate
//! renewed by SIGHUP; and unusable files refused at start before anything is created.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::support::{Cbd, TOKEN};
use crate::tls::Pki;

/// Runs the real cbctl with `args`; its exit code, stdout and stderr.
fn cbctl(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cbctl"))
        .args(args)
        .env_remove("CBD_TOKEN")
        .env_remove("CBCTL_SERVER")
        .env_remove("CBCTL_DATA_DIR")
        .output()
        .expect("run cbctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cbctl token add NAME --scope SCOPE --tokens-file FILE`: the token it printed.
fn add_token(file: &Path, name: &str, scope: &str) -> String {
    let file = file.to_str().unwrap();
    let (code, out, err) = cbctl(&[
        "token",
        "add",
        name,
        "--scope",
        scope,
        "--tokens-file",
        file,
    ]);
    assert_eq!(code, Some(0), "token add: {err}");
    assert!(err.contains("shown only this once"), "{err}");
    let token = out.trim().to_owned();
    assert!(token.starts_with("cb_") && token.len() == 51, "{out:?}");
    token
}

/// The status of `method path` with `token` (and a body for POST/PUT).
fn status(cbd: &Cbd, method: &str, path: &str, token: Option<&str>) -> u16 {
    let body: Option<Vec<u8>> = match (method, path) {
        ("POST", "/v1/changes") => Some(
            json!({"project": "p", "file_id": "1", "event": "rated", "file": {"id": "1"}})
                .to_string()
                .into_bytes(),
        ),
        ("PUT", _) => Some(
            json!({"url": "http://127.0.0.1:9/cb", "window_secs": 60})
                .to_string()
                .into_bytes(),
        ),
        _ => None,
    };
    cbd.call_with(
        method,
        path,
        Some("application/json"),
        body.as_deref(),
        token,
    )
    .0
}

/// Each scope is allowed what it names and refused the rest (403, naming the token, its
/// scope and what the route needs); an unknown token is 401; the admin token does all.
#[test]
fn scoped_tokens_are_allowed_and_refused_per_route() {
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("tokens.toml");
    let ingest = add_token(&file, "platform", "ingest");
    let read = add_token(&file, "grafana", "read");
    let admin = add_token(&file, "ops", "admin");
    let (code, out, _) = cbctl(&["token", "list", "--tokens-file", file.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    for line in ["platform", "grafana", "ops"] {
        assert!(out.contains(line), "{out}");
    }
    assert!(!out.contains(&ingest[3..15]), "list shows no token: {out}");
    // The file holds hashes only.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&ingest) && !text.contains(&read) && !text.contains(&admin));

    let cbd = Cbd::start(&["--tokens-file", file.to_str().unwrap()]);
    let routes: &[(&str, &str, [u16; 4])] = &[
        // method, path, [ingest, read, admin (file), admin (CBD_TOKEN)]
        ("POST", "/v1/changes", [202, 403, 202, 202]),
        ("GET", "/v1/status", [403, 200, 200, 200]),
        ("GET", "/v1/deliveries", [403, 200, 200, 200]),
        ("GET", "/v1/files/p/1", [403, 200, 200, 200]),
        ("GET", "/v1/log", [403, 403, 200, 200]),
        ("PUT", "/v1/projects/p/callbacks/site", [403, 403, 200, 200]),
        ("POST", "/v1/redeliver", [403, 403, 400, 400]),
        ("GET", "/v1/openapi.json", [200, 200, 200, 200]),
        ("GET", "/metrics", [200, 200, 200, 200]),
    ];
    for (method, path, want) in routes {
        let got = [&ingest, &read, &admin, &TOKEN.to_owned()]
            .map(|t| status(&cbd, method, path, Some(t)));
        assert_eq!(
            &got, want,
            "{method} {path}: ingest, read, admin, CBD_TOKEN"
        );
    }
    assert_eq!(
        status(
            &cbd,
            "GET",
            "/v1/status",
            Some("cb_not-a-token-at-all-0000")
        ),
        401
    );
    assert_eq!(status(&cbd, "POST", "/v1/changes", None), 401);

    let (code, body) = cbd.call_with("GET", "/v1/status", None, None, Some(&ingest));
    assert_eq!(code, 403);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "forbidden");
    assert_eq!(
        v["detail"],
        "the token \"platform\" has scope ingest; GET /v1/status needs read or admin"
    );
}

/// The default tokens file, DIR/tokens.toml, needs no flag: a token `cbctl token add` writes
/// there is refused until SIGHUP and accepted after; removed, it is refused after the next;
/// a file that does not read leaves the tokens in force, and cbd running.
#[test]
fn a_token_added_or_removed_counts_from_the_next_sighup() {
    let cbd = Cbd::start(&[]);
    let dir = cbd.dir.to_str().unwrap().to_owned();
    let (code, out, err) = cbctl(&["--data-dir", &dir, "token", "add", "ci", "--scope", "read"]);
    assert_eq!(code, Some(0), "{err}");
    let token = out.trim().to_owned();
    assert!(cbd.dir.join("tokens.toml").exists());
    assert_eq!(status(&cbd, "GET", "/v1/status", Some(&token)), 401);

    let reloaded = |cbd: &Cbd, times: usize| {
        cbd.wait_for("the reload's log line", Duration::from_secs(10), || {
            cbd.stderr().matches("SIGHUP:").count() >= times
        })
    };
    cbd.signal("HUP");
    reloaded(&cbd, 1);
    assert_eq!(status(&cbd, "GET", "/v1/status", Some(&token)), 200);

    // A broken file: refused with its reason, the tokens in force kept.
    let file = cbd.dir.join("tokens.toml");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, good.replace("scope = \"read\"", "scope = \"reed\"")).unwrap();
    cbd.signal("HUP");
    reloaded(&cbd, 2);
    assert!(
        cbd.stderr().contains("\"reed\" is not a scope"),
        "{}",
        cbd.stderr()
    );
    assert_eq!(status(&cbd, "GET", "/v1/status", Some(&token)), 200);
    std::fs::write(&file, good).unwrap();

    let (code, _, err) = cbctl(&["--data-dir", &dir, "token", "rm", "ci"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cbctl(&["--data-dir", &dir, "token", "rm", "ci"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("has no token named \"ci\""), "{err}");
    cbd.signal("HUP");
    reloaded(&cbd, 3);
    assert_eq!(status(&cbd, "GET", "/v1/status", Some(&token)), 401);
    assert_eq!(status(&cbd, "GET", "/v1/status", Some(TOKEN)), 200);
}

/// `--metrics-auth`: /metrics needs read (or admin); without it, /metrics is open.
#[test]
fn metrics_auth_needs_a_read_token() {
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("tokens.toml");
    let ingest = add_token(&file, "platform", "ingest");
    let read = add_token(&file, "prometheus", "read");
    let cbd = Cbd::start(&["--tokens-file", file.to_str().unwrap(), "--metrics-auth"]);
    assert_eq!(status(&cbd, "GET", "/metrics", None), 401);
    assert_eq!(status(&cbd, "GET", "/metrics", Some(&ingest)), 403);
    assert_eq!(status(&cbd, "GET", "/metrics", Some(&read)), 200);
    assert_eq!(status(&cbd, "GET", "/metrics", Some(TOKEN)), 200);
    assert_eq!(status(&cbd, "GET", "/healthz", None), 200);
}

/// A ureq agent that trusts only the CA in `ca_pem`.
pub(crate) fn https_agent(ca_pem: &str) -> ureq::Agent {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    ureq::AgentBuilder::new()
        .tls_config(Arc::new(config))
        .timeout(Duration::from_secs(10))
        .build()
}

/// The status of `GET url` with the admin token, or the transport error's text.
pub(crate) fn https_get(agent: &ureq::Agent, url: &str) -> Result<u16, String> {
    match agent
        .get(url)
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call()
    {
        Ok(r) => Ok(r.status()),
        Err(ureq::Error::Status(code, _)) => Ok(code),
        Err(e) => Err(e.to_string()),
    }
}

/// The API over TLS: a client that trusts cbd's CA gets answers over https and cbctl does
/// with `--ca-file`; one that does not is refused in the handshake; plain HTTP gets no
/// answer. SIGHUP puts a renewed certificate (here from another CA) in force for new
/// connections, and a broken one leaves the old in force.
#[test]
fn the_api_serves_https_and_sighup_renews_its_certificate() {
    let first = Pki::new();
    let issued = first.server(&["localhost", "127.0.0.1"]);
    let cert = first.write("api.pem", &issued.cert.pem());
    let key = first.write("api.key", &issued.key.serialize_pem());
    let cbd = Cbd::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let url = |path: &str| format!("https://localhost:{}{path}", cbd.addr.port());

    let trusting = https_agent(&first.ca_file());
    assert_eq!(https_get(&trusting, &url("/healthz")), Ok(200));
    assert_eq!(https_get(&trusting, &url("/v1/status")), Ok(200));
    let second = Pki::new();
    let stranger = https_agent(&second.ca_file());
    let e = https_get(&stranger, &url("/healthz")).unwrap_err();
    assert!(e.contains("invalid peer certificate"), "{e}");
    let plain = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    assert!(plain
        .get(&format!("http://{}/healthz", cbd.addr))
        .call()
        .is_err());

    // cbctl: trusted with --ca-file, and told what to give without it.
    let server = url("");
    let dir = cbd.dir.to_str().unwrap();
    let token_file = cbd.dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (code, out, err) = cbctl(&[
        "--server",
        &server,
        "--data-dir",
        dir,
        "--ca-file",
        &first.ca_file(),
        "status",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("held now"), "{out}");
    let (code, _, err) = cbctl(&["--server", &server, "--data-dir", dir, "status"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("give --ca-file"), "{err}");

    // A broken renewal is refused and the old certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    cbd.signal("HUP");
    cbd.wait_for("the reload's refusal", Duration::from_secs(10), || {
        cbd.stderr().contains("the API's TLS files do not read")
    });
    assert_eq!(https_get(&trusting, &url("/healthz")), Ok(200));

    // Renewed from another CA: new connections get it.
    let renewed = second.server(&["localhost"]);
    std::fs::write(&cert, renewed.cert.pem()).unwrap();
    std::fs::write(&key, renewed.key.serialize_pem()).unwrap();
    cbd.signal("HUP");
    cbd.wait_for("the renewed certificate", Duration::from_secs(10), || {
        https_get(&stranger, &url("/healthz")) == Ok(200)
    });
    assert!(https_get(&https_agent(&first.ca_file()), &url("/healthz")).is_err());
}

/// A tokens file or API TLS pair that does not read stops cbd at start (exit 2), with the
/// file named, before it creates its data dir.
#[test]
fn unusable_tokens_and_tls_files_stop_cbd_before_it_creates_anything() {
    let temp = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let tokens = pki.write(
        "tokens.toml",
        "[[token]]\nname = \"x\"\nscope = \"all\"\nsha256 = \"00\"\n",
    );
    let issued = pki.server(&["localhost"]);
    let cert = pki.write("api.pem", &issued.cert.pem());
    let other = pki.server(&["localhost"]);
    let wrong_key = pki.write("other.key", &other.key.serialize_pem());
    let cases: &[(&[&str], &str)] = &[
        (
            &["--tokens-file", &tokens],
            "token 1 (\"x\"): \"all\" is not a scope",
        ),
        (
            &["--tokens-file", "/nonexistent/tokens.toml"],
            "/nonexistent/tokens.toml",
        ),
        (
            &["--tls-cert", &cert, "--tls-key", &wrong_key],
            "does not belong to the certificate in --tls-cert",
        ),
        (&["--tls-cert", &cert], "--tls-cert"),
        (
            &["--tls-key", &wrong_key],
            "--tls-key given without --tls-cert",
        ),
    ];
    for (args, want) in cases {
        let dir = temp.path().join("data");
        let out = Command::new(env!("CARGO_BIN_EXE_cbd"))
            .arg("--data-dir")
            .arg(&dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(*args)
            .env("CBD_TOKEN", TOKEN)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!dir.exists(), "{args:?} created the data dir");
    }
}
