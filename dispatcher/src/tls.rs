//! Outgoing TLS: what deliveries trust, the client certificate they may present, and the
//! sentence an operator reads when a handshake fails.
//!
//! Deliveries trust the webpki roots (Mozilla's list, compiled in), the system trust store
//! (rustls-native-certs, which reads `SSL_CERT_FILE` and `SSL_CERT_DIR` as OpenSSL does), and
//! the certificates of `--ca-file`. A certificate given with `--ca-file` is also trusted as
//! itself when a receiver presents exactly it: a self-signed certificate made with
//! `openssl req -x509` carries `CA:TRUE`, which webpki never accepts as a server's own, even
//! as a trust anchor, and the operator who named that file meant to trust that receiver.
//!
//! Every file is read and checked when cbd starts ([`OutgoingTls::load`]), so a missing,
//! unreadable or mismatched one stops it before it opens its data dir, with a
//! [`TlsFileError`] that names the file and says what is wrong.
//!
//! A failed handshake becomes the `tls` outcome with [`explain`]'s sentence, chosen by
//! matching rustls's error enums (and this module's [`UntrustedCertificate`], which the
//! verifier wraps around webpki's error where the certificate itself tells more).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, InconsistentKeys,
    OtherError, RootCertStore, SignatureScheme,
};
use x509_cert::der::Decode;

/// The files that extend what deliveries trust and present (`--ca-file`, `--client-cert`,
/// `--client-key`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM files of extra trusted certificates: private CAs, or a receiver's own
    /// self-signed certificate.
    pub ca_files: Vec<PathBuf>,
    /// PEM file of the client certificate (and any intermediates after it).
    pub client_cert: Option<PathBuf>,
    /// PEM file of its private key; the certificate's file when absent (a combined PEM).
    pub client_key: Option<PathBuf>,
}

/// Why a TLS file cannot be used. Each message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file could not be read.
    #[error("{flag} {path}: cannot read it: {source}")]
    Read {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not PEM, or its PEM is damaged.
    #[error("{flag} {path}: not a PEM file ({why}); give a PEM file (-----BEGIN {what}-----)")]
    NotPem {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM reader found.
        why: String,
        /// What it should hold (`CERTIFICATE`, `PRIVATE KEY`).
        what: &'static str,
    },
    /// The file holds no item of the kind it was given for.
    #[error("{flag} {path}: holds no {what} in PEM (-----BEGIN {pem}-----){hint}")]
    Missing {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is missing, in words.
        what: &'static str,
        /// Its PEM label.
        pem: &'static str,
        /// A likely cause, with its leading separator, or empty.
        hint: &'static str,
    },
    /// A certificate in the file is not one webpki can read.
    #[error("{flag} {path}: certificate {index} is not a usable X.509 certificate ({reason})")]
    BadCertificate {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Which certificate of the file, from 1.
        index: usize,
        /// What rustls said.
        reason: String,
    },
    /// The private key is of a kind cb cannot sign with.
    #[error("{flag} {path}: not a key cb can use ({reason}); RSA, ECDSA P-256/P-384 and Ed25519 keys are")]
    BadKey {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The private key is not the certificate's.
    #[error("{key_flag} {key} does not belong to the certificate in {cert_flag} {cert} (their public keys differ)")]
    KeyMismatch {
        /// The flag that named the key.
        key_flag: &'static str,
        /// The flag that named the certificate.
        cert_flag: &'static str,
        /// The key's file.
        key: PathBuf,
        /// The certificate's file.
        cert: PathBuf,
    },
    /// A key without a certificate.
    #[error("--client-key {0} given without --client-cert: give both")]
    KeyWithoutCert(PathBuf),
    /// rustls refused the configuration for another reason.
    #[error("the TLS client configuration: {0}")]
    Config(String),
    /// rustls refused the API's server configuration for another reason.
    #[error("the API's TLS configuration: {0}")]
    ServerConfig(String),
}

/// How many certificates deliveries trust, by source, for the start-up log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Roots {
    /// From the webpki roots compiled in.
    pub webpki: usize,
    /// From the system store (or `SSL_CERT_FILE` / `SSL_CERT_DIR`).
    pub system: usize,
    /// From `--ca-file`.
    pub ca_file: usize,
}

/// The TLS side of deliveries, built once at start: what is trusted and what is presented.
#[derive(Clone)]
pub struct OutgoingTls {
    config: Arc<ClientConfig>,
    /// The verifier in `config`, kept to be asked directly in tests.
    #[cfg_attr(not(test), allow(dead_code))]
    verifier: Arc<Verifier>,
    /// How many trusted certificates came from where.
    pub roots: Roots,
    /// Whether a client certificate is presented to receivers that ask for one.
    pub client_cert: bool,
    /// What went wrong reading the system store (cbd logs them; deliveries still trust the
    /// rest).
    pub warnings: Vec<String>,
}

impl fmt::Debug for OutgoingTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingTls")
            .field("roots", &self.roots)
            .field("client_cert", &self.client_cert)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

impl OutgoingTls {
    /// The webpki roots and the system store, no extra file, no client certificate.
    pub fn system() -> OutgoingTls {
        // Without files, rustls's only failures are an empty root store and a provider
        // without TLS 1.2 or 1.3: the webpki roots are never empty, and ring has both.
        OutgoingTls::load(&TlsFiles::default())
            .expect("the webpki roots and ring make a client configuration")
    }

    /// Reads and checks `files`, then builds the client configuration over the webpki roots
    /// and the system store.
    pub fn load(files: &TlsFiles) -> Result<OutgoingTls, TlsFileError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut extra = Vec::new();
        for path in &files.ca_files {
            extra.extend(read_certificates("--ca-file", path)?);
        }
        let client = match (&files.client_cert, &files.client_key) {
            (None, None) => None,
            (None, Some(key)) => return Err(TlsFileError::KeyWithoutCert(key.clone())),
            (Some(cert), key) => Some(read_identity(
                ("--client-cert", cert),
                ("--client-key", key.as_deref().unwrap_or(cert)),
                &provider,
            )?),
        };

        let mut store = RootCertStore::empty();
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut roots = Roots {
            webpki: store.len(),
            ..Roots::default()
        };
        let native = rustls_native_certs::load_native_certs();
        let warnings: Vec<String> = native
            .errors
            .iter()
            .map(|e| format!("the system trust store: {e}"))
            .collect();
        roots.system = store.add_parsable_certificates(native.certs).0;
        for cert in &extra {
            // Each was checked as it was read (`read_certificates`), with its file named.
            store
                .add(cert.clone())
                .map_err(|e| TlsFileError::Config(e.to_string()))?;
        }
        roots.ca_file = extra.len();

        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
            .build()
            .map_err(|e| TlsFileError::Config(e.to_string()))?;
        let verifier = Arc::new(Verifier {
            inner,
            pinned: extra,
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsFileError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone());
        let client_cert = client.is_some();
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                let files = identity.files();
                builder
                    .with_client_auth_cert(identity.chain, identity.key)
                    .map_err(|e| files.refused(e))?
            }
        };
        Ok(OutgoingTls {
            config: Arc::new(config),
            verifier,
            roots,
            client_cert,
            warnings,
        })
    }

    /// The rustls configuration deliveries use.
    pub fn client_config(&self) -> &ClientConfig {
        &self.config
    }
}

/// A certificate chain and its key, read and checked: the one deliveries present
/// (`--client-cert`), or the one the API serves (`--tls-cert`).
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    files: IdentityFiles,
}

/// Where an [`Identity`] was read from, and the flags that named the files.
#[derive(Clone)]
struct IdentityFiles {
    cert_flag: &'static str,
    cert: PathBuf,
    key_flag: &'static str,
    key: PathBuf,
}

impl Identity {
    fn files(&self) -> IdentityFiles {
        self.files.clone()
    }
}

impl IdentityFiles {
    /// rustls's refusal of the pair, with the files named.
    fn refused(self, e: rustls::Error) -> TlsFileError {
        match e {
            rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                TlsFileError::KeyMismatch {
                    key_flag: self.key_flag,
                    cert_flag: self.cert_flag,
                    key: self.key,
                    cert: self.cert,
                }
            }
            other => TlsFileError::BadKey {
                flag: self.key_flag,
                path: self.key,
                reason: other.to_string(),
            },
        }
    }
}

/// The API's TLS server configuration (`--tls-cert`, `--tls-key`): the certificate chain
/// served and its key, read and checked now, so a bad pair is refused with its files named,
/// at start and at each reload. HTTP/1.1 only, as the API serves.
pub fn server_config(
    cert: &Path,
    key: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsFileError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let identity = read_identity(
        ("--tls-cert", cert),
        ("--tls-key", key.unwrap_or(cert)),
        &provider,
    )?;
    let files = identity.files();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFileError::ServerConfig(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .map_err(|e| files.refused(e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// A likely reason a file holds no PEM item, with its leading separator, or empty.
fn pem_hint(bytes: &[u8]) -> &'static str {
    if bytes.first() == Some(&0x30) {
        // An ASN.1 SEQUENCE: a certificate or key in DER.
        "; it looks like DER: openssl x509 -inform der -in FILE -out FILE.pem converts a certificate"
    } else if bytes.windows(9).any(|w| w == b"ENCRYPTED") {
        "; an encrypted key? cb needs it unencrypted: openssl pkey -in KEY -out PLAIN"
    } else {
        ""
    }
}

/// Every certificate in a PEM file (other sections skipped), each checked to parse.
fn read_certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::NotPem {
            flag,
            path: path.to_owned(),
            why: pem_error(&e),
            what: "CERTIFICATE",
        })?;
    if certs.is_empty() {
        return Err(TlsFileError::Missing {
            flag,
            path: path.to_owned(),
            what: "certificate",
            pem: "CERTIFICATE",
            hint: pem_hint(&bytes),
        });
    }
    for (i, cert) in certs.iter().enumerate() {
        // What a root store and a client chain both need: a certificate webpki can read.
        webpki::anchor_from_trusted_cert(cert).map_err(|e| TlsFileError::BadCertificate {
            flag,
            path: path.to_owned(),
            index: i + 1,
            reason: format!("{e:?}"),
        })?;
    }
    Ok(certs)
}

/// The certificate chain of `cert` and the private key in `key` (which may be the same
/// file), each with the flag that named it.
fn read_identity(
    (cert_flag, cert): (&'static str, &Path),
    (key_flag, key): (&'static str, &Path),
    provider: &CryptoProvider,
) -> Result<Identity, TlsFileError> {
    let chain = read_certificates(cert_flag, cert)?;
    let combined = key == cert;
    let flag = if combined { cert_flag } else { key_flag };
    let bytes = read(flag, key)?;
    let der = match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(der) => der,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsFileError::Missing {
                flag,
                path: key.to_owned(),
                what: "private key",
                pem: "PRIVATE KEY",
                hint: match (combined, key_flag) {
                    (true, "--tls-key") => "; give --tls-key with the key's file",
                    (true, _) => "; give --client-key with the key's file",
                    (false, _) => pem_hint(&bytes),
                },
            })
        }
        Err(e) => {
            return Err(TlsFileError::NotPem {
                flag,
                path: key.to_owned(),
                why: pem_error(&e),
                what: "PRIVATE KEY",
            })
        }
    };
    // Checked here, not only by rustls when the configuration is built, to say which file.
    provider
        .key_provider
        .load_private_key(der.clone_key())
        .map_err(|e| TlsFileError::BadKey {
            flag,
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(Identity {
        chain,
        key: der,
        files: IdentityFiles {
            cert_flag,
            cert: cert.to_owned(),
            key_flag: flag,
            key: key.to_owned(),
        },
    })
}

/// A PEM reader's error in words (its own `Display` prints byte arrays).
fn pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed".into(),
        pem::Error::Base64Decode(why) => format!("bad base64: {why}"),
        pem::Error::Io(e) => e.to_string(),
        pem::Error::NoItemsFound => "nothing in it".into(),
        pem::Error::SectionTooLarge => "a section is too large".into(),
        other => other.to_string(),
    }
}

/// What cb found out about a certificate that webpki refused, where the certificate itself
/// says more than webpki's error. Carried in `CertificateError::Other`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UntrustedCertificate {
    /// Issued by itself (issuer = subject), and not trusted.
    #[error("the certificate is self-signed and not trusted")]
    SelfSigned,
    /// A CA certificate (`CA:TRUE`) presented as the server's own, which webpki refuses.
    #[error("a CA certificate is presented as the server's own")]
    CaAsServer {
        /// Issued by itself, as `openssl req -x509` makes them.
        self_signed: bool,
    },
}

/// webpki's verifier, with the certificates of `--ca-file` also trusted as themselves, and
/// self-signed certificates named as such when refused.
#[derive(Debug)]
struct Verifier {
    inner: Arc<WebPkiServerVerifier>,
    /// The certificates of `--ca-file`.
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let error = match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(e) => e,
        };
        let ca_as_server = matches!(
            &error,
            rustls::Error::InvalidCertificate(CertificateError::Other(other))
                if matches!(webpki_error(other), Some(webpki::Error::CaUsedAsEndEntity))
        );
        if ca_as_server
            && self
                .pinned
                .iter()
                .any(|c| c.as_ref() == end_entity.as_ref())
        {
            return verify_pinned(end_entity, server_name, now);
        }
        let unknown_issuer = matches!(
            &error,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
        let why = match (ca_as_server, unknown_issuer && self_issued(end_entity)) {
            (true, _) => UntrustedCertificate::CaAsServer {
                self_signed: self_issued(end_entity),
            },
            (false, true) => UntrustedCertificate::SelfSigned,
            (false, false) => return Err(error),
        };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(why)),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A certificate the operator trusts as itself: it still has to be valid now and for the
/// name asked for. (The handshake's signature is checked against its key as for any other.)
fn verify_pinned(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<ServerCertVerified, rustls::Error> {
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|_| CertificateError::BadEncoding)?;
    let validity = &parsed.tbs_certificate.validity;
    let not_before = UnixTime::since_unix_epoch(validity.not_before.to_unix_duration());
    let not_after = UnixTime::since_unix_epoch(validity.not_after.to_unix_duration());
    if now.as_secs() < not_before.as_secs() {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before,
        }
        .into());
    }
    if now.as_secs() > not_after.as_secs() {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after,
        }
        .into());
    }
    let end_entity = rustls::server::ParsedCertificate::try_from(cert)?;
    rustls::client::verify_server_name(&end_entity, server_name)?;
    Ok(ServerCertVerified::assertion())
}

/// Whether `cert` names itself as its issuer. A certificate that cannot be parsed is not.
fn self_issued(cert: &CertificateDer<'_>) -> bool {
    x509_cert::Certificate::from_der(cert.as_ref())
        .map(|c| c.tbs_certificate.issuer == c.tbs_certificate.subject)
        .unwrap_or(false)
}

fn webpki_error(other: &OtherError) -> Option<&webpki::Error> {
    other.0.downcast_ref::<webpki::Error>()
}

/// The sentence an operator reads when TLS with `host` failed with `error`: what is wrong,
/// and the fix. `client_cert` says whether cb offers a client certificate.
pub fn explain(error: &rustls::Error, host: &str, client_cert: bool) -> String {
    use rustls::Error as E;
    use CertificateError as C;
    let cert = |what: &str| format!("TLS: the certificate of {host} {what}");
    let clock = "the receiver must renew it; or is this machine's clock wrong?";
    match error {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => cert(
                "is signed by an unknown issuer (a private CA? give cbd --ca-file with that CA's certificate)",
            ),
            C::Expired => cert(&format!("has expired ({clock})")),
            C::ExpiredContext { not_after, .. } => {
                cert(&format!("expired at {} ({clock})", time(*not_after)))
            }
            C::NotValidYet => cert("is not valid yet (is this machine's clock behind?)"),
            C::NotValidYetContext { not_before, .. } => cert(&format!(
                "is not valid until {} (is this machine's clock behind, or the receiver's ahead?)",
                time(*not_before)
            )),
            C::NotValidForName => cert(&format!(
                "is not for {host} (have the receiver serve a certificate for {host}, or use a name it has in the URL)"
            )),
            C::NotValidForNameContext { presented, .. } => {
                if presented.is_empty() {
                    cert(&format!("names no host at all, not {host} (it has no subjectAltName; have the receiver serve a certificate for {host})"))
                } else {
                    cert(&format!(
                        "is for {}, not {host} (use one of those names in the URL, or have the receiver serve a certificate for {host})",
                        names(presented)
                    ))
                }
            }
            C::Revoked => cert("has been revoked (the receiver must replace it)"),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                cert("is not for TLS servers (its extended key usage leaves out serverAuth)")
            }
            C::BadSignature => cert(
                "has a signature that does not verify (damaged, or not issued by the CA it names)",
            ),
            C::Other(other) => {
                if let Some(why) = other.0.downcast_ref::<UntrustedCertificate>() {
                    match why {
                        UntrustedCertificate::SelfSigned
                        | UntrustedCertificate::CaAsServer { self_signed: true } => cert(
                            "is self-signed (to trust it, give cbd --ca-file with that certificate)",
                        ),
                        UntrustedCertificate::CaAsServer { self_signed: false } => cert(
                            "is a CA certificate, not a server certificate (the receiver must serve one that CA issued; give cbd --ca-file with the CA)",
                        ),
                    }
                } else if let Some(e) = webpki_error(other) {
                    // webpki's errors print as their variant names only.
                    cert(&format!("was refused by webpki ({e:?})"))
                } else {
                    cert(&format!("was refused ({other})"))
                }
            }
            other => cert(&format!("was refused ({other})")),
        },
        E::AlertReceived(alert) => explain_alert(*alert, host, client_cert),
        E::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => format!(
            "TLS: {host} did not answer in TLS (a plain HTTP port? then the URL must be http://)"
        ),
        E::NoCertificatesPresented => format!("TLS: {host} presented no certificate"),
        other => format!("TLS: {host}: {other}"),
    }
}

/// The sentence for an alert the receiver sent.
fn explain_alert(alert: AlertDescription, host: &str, client_cert: bool) -> String {
    use AlertDescription as A;
    let name = alert_name(alert);
    match alert {
        A::CertificateRequired if !client_cert => format!(
            "TLS: {host} requires a client certificate (give cbd --client-cert and --client-key)"
        ),
        A::CertificateRequired => format!(
            "TLS: {host} requires a client certificate and took none from cb ({name}): check that --client-cert suits what it asks for"
        ),
        A::BadCertificate
        | A::UnsupportedCertificate
        | A::CertificateRevoked
        | A::CertificateExpired
        | A::CertificateUnknown
        | A::UnknownCA
        | A::AccessDenied
            if client_cert =>
        {
            format!(
                "TLS: {host} refused cb's client certificate ({name}): is it issued by a CA the receiver trusts, valid now, and for client authentication?"
            )
        }
        A::HandshakeFailure | A::BadCertificate | A::CertificateUnknown | A::AccessDenied => {
            format!(
                "TLS: {host} ended the handshake ({name}); if it requires a client certificate, give cbd --client-cert and --client-key"
            )
        }
        A::ProtocolVersion | A::InsufficientSecurity => format!(
            "TLS: {host} and cb share no TLS version or cipher suite ({name}); cb speaks TLS 1.2 and 1.3"
        ),
        A::UnrecognisedName => {
            format!("TLS: {host} does not serve that name ({name}); check the host in the URL")
        }
        _ => format!("TLS: {host} ended the handshake ({name})"),
    }
}

/// An alert's name as the TLS RFCs spell it.
fn alert_name(alert: AlertDescription) -> String {
    use AlertDescription as A;
    let name = match alert {
        A::CloseNotify => "close_notify",
        A::UnexpectedMessage => "unexpected_message",
        A::BadRecordMac => "bad_record_mac",
        A::DecryptionFailed => "decryption_failed",
        A::RecordOverflow => "record_overflow",
        A::DecompressionFailure => "decompression_failure",
        A::HandshakeFailure => "handshake_failure",
        A::NoCertificate => "no_certificate",
        A::BadCertificate => "bad_certificate",
        A::UnsupportedCertificate => "unsupported_certificate",
        A::CertificateRevoked => "certificate_revoked",
        A::CertificateExpired => "certificate_expired",
        A::CertificateUnknown => "certificate_unknown",
        A::IllegalParameter => "illegal_parameter",
        A::UnknownCA => "unknown_ca",
        A::AccessDenied => "access_denied",
        A::DecodeError => "decode_error",
        A::DecryptError => "decrypt_error",
        A::ExportRestriction => "export_restriction",
        A::ProtocolVersion => "protocol_version",
        A::InsufficientSecurity => "insufficient_security",
        A::InternalError => "internal_error",
        A::InappropriateFallback => "inappropriate_fallback",
        A::UserCanceled => "user_canceled",
        A::NoRenegotiation => "no_renegotiation",
        A::MissingExtension => "missing_extension",
        A::UnsupportedExtension => "unsupported_extension",
        A::CertificateUnobtainable => "certificate_unobtainable",
        A::UnrecognisedName => "unrecognized_name",
        A::BadCertificateStatusResponse => "bad_certificate_status_response",
        A::BadCertificateHashValue => "bad_certificate_hash_value",
        A::UnknownPSKIdentity => "unknown_psk_identity",
        A::CertificateRequired => "certificate_required",
        A::NoApplicationProtocol => "no_application_protocol",
        A::EncryptedClientHelloRequired => "encrypted_client_hello_required",
        other => return format!("alert {}", u8::from(other)),
    };
    format!("{name} alert")
}

/// At most four of a certificate's names, as a phrase. webpki lists them in its `Debug`
/// form (`DnsName("a.example.org")`, `IpAddress(10.0.0.1)`); the bare name reads better,
/// and anything else is shown as it came.
fn names(presented: &[String]) -> String {
    const SHOWN: usize = 4;
    let bare = |s: &str| -> String {
        s.strip_prefix("DnsName(\"")
            .and_then(|r| r.strip_suffix("\")"))
            .or_else(|| {
                s.strip_prefix("IpAddress(")
                    .and_then(|r| r.strip_suffix(')'))
            })
            .unwrap_or(s)
            .to_owned()
    };
    let mut shown: Vec<String> = presented.iter().take(SHOWN).map(|s| bare(s)).collect();
    if presented.len() > SHOWN {
        shown.push(format!("{} more", presented.len() - SHOWN));
    }
    match shown.len() {
        0 => String::new(),
        1 => shown.remove(0),
        n => {
            let last = shown.remove(n - 1);
            format!("{} and {last}", shown.join(", "))
        }
    }
}

/// A certificate's time, as RFC 3339 to the second.
fn time(t: UnixTime) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    #[test]
    fn certificate_sentences() {
        let host = "hooks.example.org";
        let say = |e: rustls::Error| explain(&e, host, false);
        assert_eq!(
            say(CertificateError::UnknownIssuer.into()),
            "TLS: the certificate of hooks.example.org is signed by an unknown issuer (a private CA? give cbd --ca-file with that CA's certificate)"
        );
        assert_eq!(
            say(CertificateError::ExpiredContext {
                time: at(1_700_000_000),
                not_after: at(1_600_000_000),
            }
            .into()),
            "TLS: the certificate of hooks.example.org expired at 2020-09-13T12:26:40Z (the receiver must renew it; or is this machine's clock wrong?)"
        );
        assert_eq!(
            say(CertificateError::NotValidYetContext {
                time: at(1_600_000_000),
                not_before: at(1_700_000_000),
            }
            .into()),
            "TLS: the certificate of hooks.example.org is not valid until 2023-11-14T22:13:20Z (is this machine's clock behind, or the receiver's ahead?)"
        );
        assert_eq!(
            say(CertificateError::NotValidForNameContext {
                expected: ServerName::try_from(host).unwrap(),
                presented: vec![
                    "DnsName(\"www.example.org\")".into(),
                    "IpAddress(192.0.2.1)".into(),
                ],
            }
            .into()),
            "TLS: the certificate of hooks.example.org is for www.example.org and 192.0.2.1, not hooks.example.org (use one of those names in the URL, or have the receiver serve a certificate for hooks.example.org)"
        );
        assert!(say(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from(host).unwrap(),
            presented: vec![],
        }
        .into())
        .contains("names no host at all"));
        assert_eq!(
            say(other(UntrustedCertificate::SelfSigned)),
            "TLS: the certificate of hooks.example.org is self-signed (to trust it, give cbd --ca-file with that certificate)"
        );
        assert_eq!(
            say(other(UntrustedCertificate::CaAsServer {
                self_signed: true
            })),
            say(other(UntrustedCertificate::SelfSigned))
        );
        assert_eq!(
            say(other(UntrustedCertificate::CaAsServer { self_signed: false })),
            "TLS: the certificate of hooks.example.org is a CA certificate, not a server certificate (the receiver must serve one that CA issued; give cbd --ca-file with the CA)"
        );
        assert_eq!(
            say(other(webpki::Error::UnsupportedCriticalExtension)),
            "TLS: the certificate of hooks.example.org was refused by webpki (UnsupportedCriticalExtension)"
        );
        assert_eq!(
            say(CertificateError::Revoked.into()),
            "TLS: the certificate of hooks.example.org has been revoked (the receiver must replace it)"
        );
    }

    #[test]
    fn alert_sentences() {
        let host = "hooks.example.org";
        let alert = |a, client_cert| explain(&rustls::Error::AlertReceived(a), host, client_cert);
        assert_eq!(
            alert(AlertDescription::CertificateRequired, false),
            "TLS: hooks.example.org requires a client certificate (give cbd --client-cert and --client-key)"
        );
        assert_eq!(
            alert(AlertDescription::HandshakeFailure, false),
            "TLS: hooks.example.org ended the handshake (handshake_failure alert); if it requires a client certificate, give cbd --client-cert and --client-key"
        );
        assert_eq!(
            alert(AlertDescription::UnknownCA, true),
            "TLS: hooks.example.org refused cb's client certificate (unknown_ca alert): is it issued by a CA the receiver trusts, valid now, and for client authentication?"
        );
        assert_eq!(
            alert(AlertDescription::ProtocolVersion, true),
            "TLS: hooks.example.org and cb share no TLS version or cipher suite (protocol_version alert); cb speaks TLS 1.2 and 1.3"
        );
        assert_eq!(
            alert(AlertDescription::Unknown(200), false),
            "TLS: hooks.example.org ended the handshake (alert 200)"
        );
        assert_eq!(
            explain(
                &rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                host,
                false
            ),
            "TLS: hooks.example.org did not answer in TLS (a plain HTTP port? then the URL must be http://)"
        );
    }

    #[test]
    fn presented_names_are_shown_bare_and_bounded() {
        let many: Vec<String> = (1..=6).map(|i| format!("DnsName(\"n{i}.org\")")).collect();
        assert_eq!(names(&many), "n1.org, n2.org, n3.org, n4.org and 2 more");
        assert_eq!(names(&["DirectoryName".into()]), "DirectoryName");
        assert_eq!(
            names(&["IpAddress(2001::db8)".into(), "DnsName(\"a\")".into()]),
            "2001::db8 and a"
        );
    }

    /// A private CA, the certificates the verifier is asked about, and their files.
    struct Pki {
        dir: tempfile::TempDir,
        ca: rcgen::Certificate,
        ca_key: KeyPair,
    }

    impl Pki {
        fn new() -> Pki {
            let ca_key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "cb test CA");
            let ca = params.self_signed(&ca_key).unwrap();
            let pki = Pki {
                dir: tempfile::tempdir().unwrap(),
                ca,
                ca_key,
            };
            pki.write("ca.pem", &pki.ca.pem());
            pki
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.path(name);
            std::fs::write(&path, text).unwrap();
            path
        }

        /// A leaf for `names`, signed by the CA.
        fn leaf(&self, names: &[&str]) -> (rcgen::Certificate, KeyPair) {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &self.ca, &self.ca_key)
                .unwrap();
            (cert, key)
        }

        /// A self-signed certificate for `localhost`, as `openssl req -x509` makes them
        /// (`CA:TRUE`) or not.
        fn self_signed(ca: bool) -> (rcgen::Certificate, KeyPair) {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            if ca {
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            }
            (params.self_signed(&key).unwrap(), key)
        }
    }

    fn verify(
        tls: &OutgoingTls,
        cert: &rcgen::Certificate,
        name: &str,
    ) -> Result<(), rustls::Error> {
        tls.verifier
            .verify_server_cert(
                cert.der(),
                &[],
                &ServerName::try_from(name).unwrap().to_owned(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    fn untrusted(result: Result<(), rustls::Error>) -> UntrustedCertificate {
        match result {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(other))) => {
                match other.0.downcast_ref::<UntrustedCertificate>() {
                    Some(UntrustedCertificate::SelfSigned) => UntrustedCertificate::SelfSigned,
                    Some(UntrustedCertificate::CaAsServer { self_signed }) => {
                        UntrustedCertificate::CaAsServer {
                            self_signed: *self_signed,
                        }
                    }
                    None => panic!("another error: {other}"),
                }
            }
            other => panic!("not an untrusted certificate: {other:?}"),
        }
    }

    #[test]
    fn a_private_ca_is_trusted_once_given() {
        let pki = Pki::new();
        let (leaf, _) = pki.leaf(&["localhost"]);
        let system = OutgoingTls::system();
        assert!(system.roots.webpki > 100, "{:?}", system.roots);
        assert_eq!(
            verify(&system, &leaf, "localhost"),
            Err(CertificateError::UnknownIssuer.into())
        );
        let tls = OutgoingTls::load(&TlsFiles {
            ca_files: vec![pki.path("ca.pem")],
            ..TlsFiles::default()
        })
        .unwrap();
        assert_eq!(tls.roots.ca_file, 1);
        assert_eq!(verify(&tls, &leaf, "localhost"), Ok(()));
        assert!(matches!(
            verify(&tls, &leaf, "other.example.org"),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForNameContext { .. }
            ))
        ));
    }

    /// Self-signed certificates are named so; given with `--ca-file`, each is trusted, the
    /// `CA:TRUE` kind too (as itself), still only for its own names.
    #[test]
    fn self_signed_certificates_are_named_and_can_be_trusted() {
        let pki = Pki::new();
        let system = OutgoingTls::system();
        for ca in [false, true] {
            let (cert, _) = Pki::self_signed(ca);
            let expected = if ca {
                UntrustedCertificate::CaAsServer { self_signed: true }
            } else {
                UntrustedCertificate::SelfSigned
            };
            assert_eq!(untrusted(verify(&system, &cert, "localhost")), expected);
            let file = pki.write("self.pem", &cert.pem());
            let tls = OutgoingTls::load(&TlsFiles {
                ca_files: vec![file],
                ..TlsFiles::default()
            })
            .unwrap();
            assert_eq!(verify(&tls, &cert, "localhost"), Ok(()), "CA:{ca}");
            assert!(
                matches!(
                    verify(&tls, &cert, "other.example.org"),
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForNameContext { .. }
                    ))
                ),
                "CA:{ca}"
            );
        }
    }

    /// The CA:TRUE certificate trusted as itself is still held to its validity.
    #[test]
    fn a_pinned_certificate_past_its_validity_is_refused() {
        let pki = Pki::new();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(2001, 1, 1);
        params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let tls = OutgoingTls::load(&TlsFiles {
            ca_files: vec![pki.write("old.pem", &cert.pem())],
            ..TlsFiles::default()
        })
        .unwrap();
        let e = verify(&tls, &cert, "localhost").unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
            ),
            "{e:?}"
        );
        assert!(explain(&e, "localhost", false).contains("expired at 2002-01-01T00:00:00Z"));
    }

    #[test]
    fn bad_files_are_refused_with_their_name() {
        let pki = Pki::new();
        let (leaf, key) = pki.leaf(&["client"]);
        let cert_file = pki.write("client.pem", &leaf.pem());
        let key_file = pki.write("client.key", &key.serialize_pem());
        let load = |files: TlsFiles| OutgoingTls::load(&files).unwrap_err().to_string();
        let ca = |path: PathBuf| TlsFiles {
            ca_files: vec![path],
            ..TlsFiles::default()
        };

        let missing = pki.path("nope.pem");
        let e = load(ca(missing.clone()));
        assert!(
            e.starts_with(&format!(
                "--ca-file {}: cannot read it: ",
                missing.display()
            )),
            "{e}"
        );
        let e = load(ca(pki.write("text.pem", "hello\n")));
        assert!(
            e.contains("holds no certificate in PEM (-----BEGIN CERTIFICATE-----)"),
            "{e}"
        );
        let der = pki.path("ca.der");
        std::fs::write(&der, pki.ca.der()).unwrap();
        let e = load(ca(der));
        assert!(
            e.contains("it looks like DER: openssl x509 -inform der"),
            "{e}"
        );
        let e = load(ca(pki.write(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )));
        assert!(e.contains("not a PEM file (bad base64"), "{e}");
        let e = load(ca(pki.write(
            "junk.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        )));
        assert!(
            e.contains("certificate 1 is not a usable X.509 certificate"),
            "{e}"
        );

        let (_, other_key) = pki.leaf(&["other"]);
        let other_key_file = pki.write("other.key", &other_key.serialize_pem());
        let e = load(TlsFiles {
            client_cert: Some(cert_file.clone()),
            client_key: Some(other_key_file),
            ..TlsFiles::default()
        });
        assert!(
            e.contains("does not belong to the certificate in --client-cert"),
            "{e}"
        );
        let e = load(TlsFiles {
            client_key: Some(key_file.clone()),
            ..TlsFiles::default()
        });
        assert!(e.contains("given without --client-cert"), "{e}");
        let e = load(TlsFiles {
            client_cert: Some(cert_file.clone()),
            ..TlsFiles::default()
        });
        assert!(
            e.contains("holds no private key in PEM") && e.contains("give --client-key"),
            "{e}"
        );
        let e = load(TlsFiles {
            client_cert: Some(cert_file.clone()),
            client_key: Some(cert_file.clone()),
            ..TlsFiles::default()
        });
        assert!(e.starts_with("--client-cert"), "{e}");

        let tls = OutgoingTls::load(&TlsFiles {
            client_cert: Some(cert_file),
            client_key: Some(key_file),
            ..TlsFiles::default()
        })
        .unwrap();
        assert!(tls.client_cert);
        // One file holding both is enough.
        let both = pki.write(
            "both.pem",
            &format!("{}{}", leaf.pem(), key.serialize_pem()),
        );
        let tls = OutgoingTls::load(&TlsFiles {
            client_cert: Some(both),
            ..TlsFiles::default()
        })
        .unwrap();
        assert!(tls.client_cert);
    }
}
