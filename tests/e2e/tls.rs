//! Outgoing TLS against real local HTTPS receivers, with a private CA and certificates each
//! test makes (rcgen): a receiver whose CA cb does not know is refused with a sentence that
//! says to give `--ca-file`, and is delivered to once cbd starts with it (or with
//! `SSL_CERT_FILE`); an expired certificate, one for another name and a self-signed one are
//! each named; a receiver that requires a client certificate is refused until cbd presents
//! one; and unusable files stop cbd at start, before it creates its data dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

use crate::support::{snapshot, Cbd, Receiver};

/// A certificate and its key.
pub(crate) struct Issued {
    pub(crate) cert: rcgen::Certificate,
    pub(crate) key: KeyPair,
}

/// A private CA, and a directory for the PEM files cbd is given.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    ca: Issued,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "cb e2e private CA");
        let cert = params.self_signed(&key).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: Issued { cert, key },
        };
        pki.write("ca.pem", &pki.ca.cert.pem());
        pki
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    pub(crate) fn ca_file(&self) -> String {
        self.dir.path().join("ca.pem").to_str().unwrap().to_owned()
    }

    /// A certificate the CA issued with `params`.
    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca.cert, &self.ca.key).unwrap();
        Issued { cert, key }
    }

    /// A server certificate for `names`.
    pub(crate) fn server(&self, names: &[&str]) -> Issued {
        let names = names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        self.issue(CertificateParams::new(names).unwrap())
    }

    /// A client certificate, written as `client.pem` and `client.key`; their paths.
    pub(crate) fn client(&self) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "cb e2e client");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = self.issue(params);
        (
            self.write("client.pem", &client.cert.pem()),
            self.write("client.key", &client.key.serialize_pem()),
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A receiver serving `identity`, requiring a client certificate issued by `client_ca` if
/// given.
fn https_receiver(identity: &Issued, client_ca: Option<&Issued>) -> Receiver {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der().clone()).unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap(),
            )
        }
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key.serialize_der()));
    let config = builder
        .with_single_cert(vec![identity.cert.der().clone()], key)
        .unwrap();
    Receiver::tls(Arc::new(config))
}

/// Puts a callback to `url` (one retry, a minute on) and posts a change; once its first
/// attempt is recorded, that attempt's outcome class and detail.
fn first_attempt(cbd: &Cbd, url: &str) -> (String, String) {
    cbd.put_callback(
        "p",
        "site",
        json!({"url": url, "leading": true, "backoff_secs": [60]}),
    );
    cbd.change("p", "1", "rated", snapshot("1", 1));
    cbd.wait_for(
        "the first attempt recorded",
        Duration::from_secs(20),
        || cbd.machine("p", "1", "site")["state"] == "retrying",
    );
    let history = cbd.get("/v1/files/p/1/history");
    let attempts: Vec<(String, String)> = history["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "attempt")
        .map(|s| {
            (
                s["class"].as_str().unwrap().to_owned(),
                s["detail"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    attempts.into_iter().next().unwrap()
}

/// Redelivers file 1 at once and waits until the receiver has it.
fn redeliver_to(cbd: &Cbd, receiver: &Receiver) {
    let (status, v) = cbd.json("POST", "/v1/files/p/1/redeliver?callback=site", None);
    assert_eq!(status, 202, "{v}");
    receiver.wait_for_count(1, Duration::from_secs(20));
    cbd.wait_for("delivered", Duration::from_secs(20), || {
        cbd.machine("p", "1", "site")["state"] == "sent"
    });
}

/// The issue's trial: a private CA is refused with a sentence that says what to do, and
/// doing it (a restart with `--ca-file`) delivers.
#[test]
fn a_private_ca_is_named_then_trusted_with_ca_file() {
    let pki = Pki::new();
    let receiver = https_receiver(&pki.server(&["localhost", "127.0.0.1"]), None);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("data");
    let mut cbd = Cbd::start_in(&dir, &["--allow-private-targets"]);
    let (class, detail) = first_attempt(&cbd, &receiver.https_url("/cb"));
    assert_eq!(class, "tls");
    assert_eq!(
        detail,
        "TLS: the certificate of localhost is signed by an unknown issuer (a private CA? give cbd --ca-file with that CA's certificate)"
    );
    assert_eq!(receiver.count(), 0);
    assert!(cbd.terminate().success());

    let cbd = Cbd::start_in(
        &dir,
        &["--allow-private-targets", "--ca-file", &pki.ca_file()],
    );
    redeliver_to(&cbd, &receiver);
    assert_eq!(receiver.received()[0].uri, "/cb");
}

/// `SSL_CERT_FILE` replaces the system store (rustls-native-certs reads it as OpenSSL
/// does), so a CA named there is trusted without `--ca-file`.
#[test]
fn ssl_cert_file_is_trusted() {
    let pki = Pki::new();
    let receiver = https_receiver(&pki.server(&["localhost"]), None);
    let data = tempfile::tempdir().unwrap();
    let cbd = Cbd::start_in_with_env(
        &data.path().join("data"),
        &["--allow-private-targets"],
        &[("SSL_CERT_FILE", &pki.ca_file())],
    );
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.https_url("/cb"), "leading": true}),
    );
    cbd.change("p", "1", "rated", snapshot("1", 1));
    receiver.wait_for_count(1, Duration::from_secs(20));
    cbd.wait_for("delivered", Duration::from_secs(20), || {
        cbd.machine("p", "1", "site")["state"] == "sent"
    });
}

/// With the CA trusted, what is wrong with the certificate itself is named.
#[test]
fn expired_and_misnamed_certificates_are_named() {
    let pki = Pki::new();
    let mut expired = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    expired.not_before = rcgen::date_time_ymd(2001, 1, 1);
    expired.not_after = rcgen::date_time_ymd(2001, 1, 2);
    let expired = https_receiver(&pki.issue(expired), None);
    let misnamed = https_receiver(&pki.server(&["hooks.example.org", "www.example.org"]), None);
    for (receiver, expected) in [
        (
            &expired,
            "TLS: the certificate of localhost expired at 2001-01-02T00:00:00Z (the receiver must renew it; or is this machine's clock wrong?)",
        ),
        (
            &misnamed,
            "TLS: the certificate of localhost is for hooks.example.org and www.example.org, not localhost (use one of those names in the URL, or have the receiver serve a certificate for localhost)",
        ),
    ] {
        let cbd = Cbd::start(&["--allow-private-targets", "--ca-file", &pki.ca_file()]);
        assert_eq!(
            first_attempt(&cbd, &receiver.https_url("/cb")),
            ("tls".to_owned(), expected.to_owned())
        );
        assert_eq!(receiver.count(), 0);
    }
}

/// A self-signed certificate as `openssl req -x509` makes it (`CA:TRUE`, which webpki never
/// takes as a server's own): named, then trusted once given with `--ca-file`, as the
/// sentence says.
#[test]
fn a_self_signed_receiver_is_named_then_trusted_with_its_certificate() {
    let pki = Pki::new();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let own = Issued {
        cert: params.self_signed(&key).unwrap(),
        key,
    };
    let receiver = https_receiver(&own, None);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("data");
    let mut cbd = Cbd::start_in(&dir, &["--allow-private-targets"]);
    assert_eq!(
        first_attempt(&cbd, &receiver.https_url("/cb")),
        (
            "tls".to_owned(),
            "TLS: the certificate of localhost is self-signed (to trust it, give cbd --ca-file with that certificate)".to_owned()
        )
    );
    assert!(cbd.terminate().success());

    let own_file = pki.write("receiver.pem", &own.cert.pem());
    let cbd = Cbd::start_in(&dir, &["--allow-private-targets", "--ca-file", &own_file]);
    redeliver_to(&cbd, &receiver);
}

/// A receiver that requires a client certificate: refused with the sentence naming
/// `--client-cert`/`--client-key`, delivered once cbd presents one.
#[test]
fn a_receiver_requiring_a_client_certificate_gets_one() {
    let pki = Pki::new();
    let (client_cert, client_key) = pki.client();
    let receiver = https_receiver(&pki.server(&["localhost"]), Some(&pki.ca));
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("data");
    let mut cbd = Cbd::start_in(
        &dir,
        &["--allow-private-targets", "--ca-file", &pki.ca_file()],
    );
    assert_eq!(
        first_attempt(&cbd, &receiver.https_url("/cb")),
        (
            "tls".to_owned(),
            "TLS: localhost requires a client certificate (give cbd --client-cert and --client-key)"
                .to_owned()
        )
    );
    assert_eq!(receiver.count(), 0);
    assert!(cbd.terminate().success());

    let cbd = Cbd::start_in(
        &dir,
        &[
            "--allow-private-targets",
            "--ca-file",
            &pki.ca_file(),
            "--client-cert",
            &client_cert,
            "--client-key",
            &client_key,
        ],
    );
    redeliver_to(&cbd, &receiver);
}

/// Runs cbd on `dir` with `args` until it exits; its exit code and stderr.
fn cbd_exit(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cbd"))
        .arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .args(args)
        .env("CBD_TOKEN", crate::support::TOKEN)
        .output()
        .expect("run cbd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Unusable files stop cbd with exit 2 and a sentence naming the file, before it creates its
/// data dir.
#[test]
fn unusable_tls_files_stop_cbd_before_it_creates_anything() {
    let pki = Pki::new();
    let (client_cert, _) = pki.client();
    let other_key = pki.write("other.key", &KeyPair::generate().unwrap().serialize_pem());
    let not_pem = pki.write("notes.txt", "my CA is the one from IT\n");
    let missing: PathBuf = pki.dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("data");
    for (args, expected) in [
        (
            vec!["--ca-file", missing],
            format!("cbd: --ca-file {missing}: cannot read it: No such file or directory"),
        ),
        (
            vec!["--ca-file", &not_pem],
            format!("cbd: --ca-file {not_pem}: holds no certificate in PEM (-----BEGIN CERTIFICATE-----)"),
        ),
        (
            vec!["--client-cert", &client_cert, "--client-key", &other_key],
            format!("cbd: --client-key {other_key} does not belong to the certificate in --client-cert {client_cert} (their public keys differ)"),
        ),
        (
            vec!["--client-cert", &client_cert],
            format!("cbd: --client-cert {client_cert}: holds no private key in PEM (-----BEGIN PRIVATE KEY-----); give --client-key with the key's file"),
        ),
    ] {
        let (code, stderr) = cbd_exit(&dir, &args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with(&expected), "{args:?}: {stderr}");
        assert!(!dir.exists(), "{args:?} created the data dir");
    }
}
