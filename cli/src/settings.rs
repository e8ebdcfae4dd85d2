//! cbd's settings: command-line flags, `CBD_*` environment variables and an optional TOML
//! file (`--config`), in that order of precedence, over built-in defaults — so `cbd` with no
//! arguments starts and works.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cb_dispatcher::{DeliveryConfig, DispatcherOptions, LimitsConfig, OutgoingTls, TlsFiles};
use clap::Parser;
use serde::Deserialize;

use crate::credentials::{TokensFile, TokensFileError};
pub use crate::reload::TlsFiles as ApiTlsFiles;
use crate::reload::TokensSource;

/// The default request body limit (SPEC §6).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The default batch body limit: a thousand 1.5 KB changes do not fit in 1 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// `cbd` — cb's media callback daemon.
#[derive(Parser, Debug, Default)]
#[command(
    name = "cbd",
    version,
    about = "cb's media callback daemon: durable, coalesced, auditable callbacks",
    after_help = "Settings come from flags, then CBD_* environment variables, then the --config \
TOML file (keys as the long flags, with underscores: data_dir = \"/var/lib/cb\"), then defaults.\n\
The admin API token comes from CBD_TOKEN (16 to 256 visible ASCII characters), or is generated \
into DIR/token (mode 0600) on first start; scoped tokens (ingest, read, admin) are in the tokens \
file (`cbctl token add`).\n\
SIGHUP reads the tokens file and the API's --tls-cert/--tls-key again; other settings take a \
restart.\n\
HTTPS deliveries trust the webpki roots, the system trust store (SSL_CERT_FILE and SSL_CERT_DIR \
replace it, as for OpenSSL) and each --ca-file; a TLS failure is recorded as the tls outcome with \
what is wrong and the fix.\n\n\
Examples:\n  cbd\n  cbd --data-dir /var/lib/cb --listen 0.0.0.0:8650 --smtp mail.example.org:25\n  \
CBD_TOKEN=$(openssl rand -hex 24) cbd --config /etc/cb/cbd.toml\n  \
cbd --ca-file /etc/cb/private-ca.pem --client-cert /etc/cb/client.pem --client-key /etc/cb/client.key\n  \
cbd --tls-cert /etc/cb/tls/cbd.pem --tls-key /etc/cb/tls/cbd.key --metrics-auth"
)]
pub struct Args {
    /// TOML file with settings.
    #[arg(long, env = "CBD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the log, checkpoints and token live [default: ./cbd-data].
    #[arg(long, env = "CBD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the HTTP API, IP:PORT or HOST:PORT [default: 127.0.0.1:8650].
    #[arg(long, env = "CBD_LISTEN", value_name = "ADDR", value_parser = listen_addr)]
    pub listen: Option<SocketAddr>,
    /// SMTP relay for mailto: callbacks.
    #[arg(long, env = "CBD_SMTP", value_name = "HOST:PORT")]
    pub smtp: Option<String>,
    /// Sender of mailto: deliveries [default: cb <cb@localhost>].
    #[arg(long, env = "CBD_MAIL_FROM", value_name = "ADDRESS")]
    pub mail_from: Option<String>,
    /// Allow callbacks to loopback, private and other non-public addresses.
    #[arg(long, env = "CBD_ALLOW_PRIVATE_TARGETS")]
    pub allow_private_targets: bool,
    /// PEM certificates HTTPS deliveries trust besides the webpki roots and the system
    /// store: a private CA, or a receiver's own self-signed certificate. May be repeated.
    #[arg(long, env = "CBD_CA_FILE", value_name = "PEM")]
    pub ca_file: Vec<PathBuf>,
    /// PEM client certificate (then any intermediates) for receivers that require one
    /// (mutual TLS).
    #[arg(long, env = "CBD_CLIENT_CERT", value_name = "PEM")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert [default: the --client-cert file, if it holds the
    /// key too].
    #[arg(long, env = "CBD_CLIENT_KEY", value_name = "PEM")]
    pub client_key: Option<PathBuf>,
    /// Largest request body [default: 1048576].
    #[arg(long, env = "CBD_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest POST /v1/changes/batch body [default: 67108864].
    #[arg(long, env = "CBD_MAX_BATCH_BYTES", value_name = "BYTES")]
    pub max_batch_bytes: Option<usize>,
    /// First attempts in flight, all receivers together [default: 1024].
    #[arg(long, env = "CBD_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// First attempts in flight to one origin that answers [default: 16]; one that has not
    /// answered yet gets 2, and one whose last 3 attempts got no answer gets 1.
    #[arg(long, env = "CBD_MAX_IN_FLIGHT_PER_ORIGIN", value_name = "N")]
    pub max_in_flight_per_origin: Option<usize>,
    /// API connections open at once [default: 10000]; past it, a connection is answered
    /// 503 `too_many_connections` with `Retry-After` and closed.
    #[arg(long, env = "CBD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// How long shutdown waits for attempts in flight [default: 10].
    #[arg(long, env = "CBD_SHUTDOWN_GRACE_SECS", value_name = "SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "CBD_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Keep history this long: a number with s, m, h or d, or `forever` [default: 30d].
    /// Older segments are removed once a checkpoint covers them; the latest change of
    /// every file is kept.
    #[arg(long, env = "CBD_RETAIN", value_name = "DURATION", value_parser = retain)]
    pub retain: Option<Retain>,
    /// Keep at most this much log: a number with KiB, MiB or GiB, or plain bytes [default:
    /// no limit]. With --retain too, whichever removes more applies.
    #[arg(long, env = "CBD_RETAIN_BYTES", value_name = "SIZE", value_parser = size)]
    pub retain_bytes: Option<u64>,
    /// Write removed history here first, as zstd-compressed NDJSON that `cbctl import`
    /// reads.
    #[arg(long, env = "CBD_ARCHIVE_DIR", value_name = "DIR")]
    pub archive_dir: Option<PathBuf>,
    /// Space of one log segment, the unit in which the log grows and retention removes it
    /// [default: 64MiB].
    #[arg(long, env = "CBD_SEGMENT_BYTES", value_name = "SIZE", value_parser = size)]
    pub segment_bytes: Option<u64>,
    /// (project, callback) pairs whose /metrics series have labels of their own
    /// [default: 1000]; later pairs are counted together under project and callback
    /// "~other". 0 labels none.
    #[arg(long, env = "CBD_METRICS_MAX_SERIES", value_name = "N")]
    pub metrics_max_series: Option<usize>,
    /// /metrics needs a token of scope read (or admin), as /v1's GETs do.
    #[arg(long, env = "CBD_METRICS_AUTH")]
    pub metrics_auth: bool,
    /// Scoped API tokens: TOML [[token]] tables of name, scope (ingest, read or admin) and
    /// sha256 (of the token), as `cbctl token add` writes them; read at start and on SIGHUP
    /// [default: DIR/tokens.toml, if it exists].
    #[arg(long, env = "CBD_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// PEM certificate chain the API serves HTTPS with (then --tls-key); read at start and
    /// on SIGHUP. Without it the API is plain HTTP.
    #[arg(long, env = "CBD_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [default: the --tls-cert file, if it holds the key
    /// too].
    #[arg(long, env = "CBD_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
}

/// How long history is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retain {
    /// Never removed.
    Forever,
    /// Removed once older than this.
    For(Duration),
}

/// `--retain`: `forever`, or a number with `s`, `m`, `h` or `d` (`30d`, `12h`).
pub fn retain(s: &str) -> Result<Retain, String> {
    if s.trim() == "forever" {
        return Ok(Retain::Forever);
    }
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?}: give a number with s, m, h or d (30d), or forever"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => {
            return Err(format!(
                "{s:?}: give a number with s, m, h or d (30d), or forever"
            ))
        }
    };
    if secs == 0 {
        return Err(format!("{s:?}: history kept for no time at all; give forever to keep it all, or a positive duration"));
    }
    Ok(Retain::For(Duration::from_secs(secs)))
}

/// A size: a number with `KiB`, `MiB` or `GiB`, or plain bytes.
pub fn size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?}: give a number with KiB, MiB or GiB, or plain bytes"))?;
    let scale = match unit.trim() {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?}: give a number with KiB, MiB or GiB, or plain bytes"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// `--listen`: an IP address and port, or a host name and port (`localhost:8650`), which
/// is resolved once, at start, to one address: its first IPv4 one, if it has one.
fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(s)
        .map_err(|e| format!("{s:?} is not IP:PORT or HOST:PORT that resolves: {e}"))?
        .collect();
    // IPv4 first: `localhost` often resolves to ::1 first, and clients and the docs use
    // 127.0.0.1.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// The TOML file: the same settings, every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    smtp: Option<String>,
    mail_from: Option<String>,
    allow_private_targets: Option<bool>,
    ca_file: Option<Paths>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    max_body_bytes: Option<usize>,
    max_batch_bytes: Option<usize>,
    max_in_flight: Option<usize>,
    max_in_flight_per_origin: Option<usize>,
    max_connections: Option<usize>,
    shutdown_grace_secs: Option<u64>,
    log_format: Option<LogFormat>,
    retain: Option<String>,
    retain_bytes: Option<String>,
    archive_dir: Option<PathBuf>,
    segment_bytes: Option<String>,
    metrics_max_series: Option<usize>,
    metrics_auth: Option<bool>,
    tokens_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// One path or a list of them (`ca_file = "a.pem"` or `ca_file = ["a.pem", "b.pem"]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Paths {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl Paths {
    fn into_vec(self) -> Vec<PathBuf> {
        match self {
            Paths::One(p) => vec![p],
            Paths::Many(v) => v,
        }
    }
}

/// The keys the TOML file takes, read off [`FileSettings`] itself (serde's derive hands a
/// struct's field names to the deserializer), so that a test can hold the example file,
/// docs/deploy/cbd.toml, to every one of them: a new setting without an example fails it.
pub fn file_keys() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    /// A deserializer that only notes the field names it is asked for, then stops.
    struct Names<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Names<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only a struct's field names are read"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("only a struct's field names are read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    // Always the error above: the names are what was wanted.
    let _ = FileSettings::deserialize(Names(&mut fields));
    fields
}

/// Resolved settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The data dir.
    pub data_dir: PathBuf,
    /// API address.
    pub listen: SocketAddr,
    /// SMTP relay.
    pub smtp: Option<String>,
    /// Sender of mail deliveries.
    pub mail_from: Option<String>,
    /// See [`Args::allow_private_targets`].
    pub allow_private_targets: bool,
    /// What HTTPS deliveries trust and present, its files read and checked.
    pub tls: OutgoingTls,
    /// Request body limit.
    pub max_body_bytes: usize,
    /// Batch body limit.
    pub max_batch_bytes: usize,
    /// Global bound on first attempts in flight.
    pub max_in_flight: usize,
    /// Per-origin bound.
    pub max_in_flight_per_origin: usize,
    /// Bound on open API connections.
    pub max_connections: usize,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// What the log keeps.
    pub retention: cb_store::Retention,
    /// Space of one log segment.
    pub segment_bytes: u64,
    /// (project, callback) pairs with metrics labels of their own.
    pub metrics_max_series: usize,
    /// See [`Args::metrics_auth`].
    pub metrics_auth: bool,
    /// Where the scoped tokens are read from.
    pub tokens: TokensSource,
    /// The scoped tokens as read at start (checked before anything is created on disk).
    pub scoped_tokens: TokensFile,
    /// The API's TLS files, checked at start; plain HTTP when absent.
    pub api_tls: Option<ApiTlsFiles>,
}

/// Why the settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The TOML file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file is malformed or has unknown keys.
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
    /// A TLS file (`--ca-file`, `--client-cert`, `--client-key`, `--tls-cert`,
    /// `--tls-key`) is unusable.
    #[error(transparent)]
    Tls(#[from] cb_dispatcher::TlsFileError),
    /// The tokens file is unusable.
    #[error("--tokens-file {0}")]
    Tokens(#[from] TokensFileError),
}

impl Settings {
    /// Resolves `args` (flags and environment, as clap read them) over the TOML file over
    /// the defaults.
    pub fn resolve(args: Args) -> Result<Settings, SettingsError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./cbd-data"));
        let tokens = TokensSource::new(args.tokens_file.or(file.tokens_file), &data_dir);
        let api_tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(SettingsError::Invalid(
                    "--tls-key given without --tls-cert: give both, or neither for plain HTTP"
                        .into(),
                ))
            }
            (Some(cert), key) => {
                let files = ApiTlsFiles { cert, key };
                // Read now, so a bad pair stops cbd before it creates anything.
                files.load()?;
                Some(files)
            }
        };
        let s = Settings {
            scoped_tokens: tokens.read()?,
            tokens,
            api_tls,
            data_dir,
            listen: match (args.listen, file.listen) {
                (Some(a), _) => a,
                (None, Some(f)) => {
                    listen_addr(&f).map_err(|e| SettingsError::Invalid(format!("listen: {e}")))?
                }
                (None, None) => SocketAddr::from(([127, 0, 0, 1], 8650)),
            },
            smtp: args.smtp.or(file.smtp).filter(|s| !s.is_empty()),
            mail_from: args.mail_from.or(file.mail_from).filter(|s| !s.is_empty()),
            allow_private_targets: args.allow_private_targets
                || file.allow_private_targets.unwrap_or(false),
            // Read now, so a bad file stops cbd before it creates anything.
            tls: OutgoingTls::load(&TlsFiles {
                ca_files: if args.ca_file.is_empty() {
                    file.ca_file.map(Paths::into_vec).unwrap_or_default()
                } else {
                    args.ca_file
                },
                client_cert: args.client_cert.or(file.client_cert),
                client_key: args.client_key.or(file.client_key),
            })?,
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            max_batch_bytes: args
                .max_batch_bytes
                .or(file.max_batch_bytes)
                .unwrap_or(DEFAULT_MAX_BATCH_BYTES),
            max_in_flight: args
                .max_in_flight
                .or(file.max_in_flight)
                .unwrap_or(LimitsConfig::default().global),
            max_in_flight_per_origin: args
                .max_in_flight_per_origin
                .or(file.max_in_flight_per_origin)
                .unwrap_or(LimitsConfig::default().per_origin),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(crate::server::DEFAULT_MAX_CONNECTIONS),
            shutdown_grace: Duration::from_secs(
                args.shutdown_grace_secs
                    .or(file.shutdown_grace_secs)
                    .unwrap_or(10),
            ),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            retention: {
                let retain = match args.retain {
                    Some(r) => r,
                    None => file_value("retain", file.retain, retain)?
                        .unwrap_or(Retain::For(Duration::from_secs(30 * 86_400))),
                };
                let max_bytes = match args.retain_bytes {
                    Some(b) => Some(b),
                    None => file_value("retain_bytes", file.retain_bytes, size)?,
                };
                let max_age = match retain {
                    Retain::Forever => None,
                    Retain::For(d) => Some(d),
                };
                cb_store::Retention {
                    max_age,
                    max_bytes,
                    archive_dir: args.archive_dir.or(file.archive_dir),
                    // A short retention (a trial, a test) is looked at often enough to be
                    // seen working; a month-long one still only once a minute.
                    check_every: max_age
                        .map(|age| (age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)))
                        .unwrap_or(Duration::from_secs(60)),
                }
            },
            segment_bytes: match args.segment_bytes {
                Some(b) => b,
                None => file_value("segment_bytes", file.segment_bytes, size)?
                    .unwrap_or(cb_store::SEGMENT_BYTES),
            },
            metrics_max_series: args
                .metrics_max_series
                .or(file.metrics_max_series)
                .unwrap_or(cb_dispatcher::metrics::DEFAULT_MAX_SERIES),
            metrics_auth: args.metrics_auth || file.metrics_auth.unwrap_or(false),
        };
        if s.segment_bytes < 64 * 1024 || s.segment_bytes > cb_store::MAX_SEGMENT_BYTES {
            return Err(SettingsError::Invalid(format!(
                "segment_bytes must be between 64KiB and 4GiB, not {}",
                s.segment_bytes
            )));
        }
        if s.max_connections == 0 {
            return Err(SettingsError::Invalid(
                "max_connections must be at least 1".into(),
            ));
        }
        if s.max_in_flight == 0 || s.max_in_flight_per_origin == 0 {
            return Err(SettingsError::Invalid(
                "max_in_flight and max_in_flight_per_origin must be at least 1".into(),
            ));
        }
        if s.max_body_bytes < 1024 || s.max_batch_bytes < 1024 {
            return Err(SettingsError::Invalid(
                "max_body_bytes and max_batch_bytes must be at least 1024".into(),
            ));
        }
        if let Some(smtp) = &s.smtp {
            if !smtp.contains(':') {
                return Err(SettingsError::Invalid(format!(
                    "--smtp {smtp:?}: give HOST:PORT, as mail.example.org:25"
                )));
            }
        }
        if let Some(from) = &s.mail_from {
            cb_dispatcher::mail::Mailer::check_sender(from).map_err(SettingsError::Invalid)?;
        }
        Ok(s)
    }

    /// The dispatcher's options.
    pub fn dispatcher(&self) -> DispatcherOptions {
        let mut o = DispatcherOptions::new(self.data_dir.clone());
        o.delivery = DeliveryConfig {
            allow_private_targets: self.allow_private_targets,
            limits: LimitsConfig {
                global: self.max_in_flight,
                per_origin: self.max_in_flight_per_origin,
            },
            smtp: self.smtp.clone(),
            mail_from: self.mail_from.clone(),
            tls: Some(self.tls.clone()),
        };
        o.shutdown_grace = self.shutdown_grace;
        o.segment_bytes = self.segment_bytes;
        o.retention = Some(self.retention.clone());
        o.metrics_max_series = self.metrics_max_series;
        o
    }
}

/// A TOML value parsed as its flag is.
fn file_value<T>(
    key: &str,
    value: Option<String>,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<T>, SettingsError> {
    value
        .map(|v| parse(&v).map_err(|e| SettingsError::Invalid(format!("{key}: {e}"))))
        .transpose()
}

fn read_file(path: &Path) -> Result<FileSettings, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| SettingsError::Toml {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_anything() {
        let s = Settings::resolve(Args::default()).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("./cbd-data"));
        assert_eq!(s.listen.to_string(), "127.0.0.1:8650");
        assert_eq!(s.max_body_bytes, 1024 * 1024);
        assert!(!s.allow_private_targets);
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cbd.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\nlisten = \"127.0.0.1:9000\"\nallow_private_targets = true\n",
        )
        .unwrap();
        let args = Args::try_parse_from([
            "cbd",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9001",
        ])
        .unwrap();
        let s = Settings::resolve(args).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/from/file"));
        assert_eq!(s.listen.to_string(), "127.0.0.1:9001");
        assert!(s.allow_private_targets);
    }

    /// `--listen` (and the file's `listen`) take a host name as well as an address.
    #[test]
    fn listen_takes_a_host_name() {
        let args = Args::try_parse_from(["cbd", "--listen", "localhost:9002"]).unwrap();
        let s = Settings::resolve(args).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9002");
        let e = Args::try_parse_from(["cbd", "--listen", "9002"]).unwrap_err();
        assert!(e.to_string().contains("HOST:PORT"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cbd.toml");
        std::fs::write(&path, "listen = \"localhost:9003\"\n").unwrap();
        let args = Args::try_parse_from(["cbd", "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(Settings::resolve(args).unwrap().listen.port(), 9003);
    }

    #[test]
    fn retention_and_sizes_read_as_documented() {
        let s = Settings::resolve(Args::default()).unwrap();
        assert_eq!(s.retention.max_age, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(s.retention.max_bytes, None);
        assert_eq!(s.segment_bytes, 64 << 20);
        let args = Args::try_parse_from([
            "cbd",
            "--retain",
            "12h",
            "--retain-bytes",
            "10GiB",
            "--segment-bytes",
            "1MiB",
        ])
        .unwrap();
        let s = Settings::resolve(args).unwrap();
        assert_eq!(s.retention.max_age, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(s.retention.max_bytes, Some(10 << 30));
        assert_eq!(s.segment_bytes, 1 << 20);
        assert_eq!(s.retention.check_every, Duration::from_secs(60));
        for (retain, every) in [("4s", 1), ("40s", 10), ("10m", 60)] {
            let args = Args::try_parse_from(["cbd", "--retain", retain]).unwrap();
            let s = Settings::resolve(args).unwrap();
            assert_eq!(
                s.retention.check_every,
                Duration::from_secs(every),
                "{retain}"
            );
        }
        let args = Args::try_parse_from(["cbd", "--retain", "forever"]).unwrap();
        assert_eq!(Settings::resolve(args).unwrap().retention.max_age, None);
        for bad in ["30", "3w", "d", "0s", "-1d"] {
            assert!(
                Args::try_parse_from(["cbd", "--retain", bad]).is_err(),
                "{bad}"
            );
        }
        for bad in ["10GB", "MiB", "1.5MiB"] {
            assert!(
                Args::try_parse_from(["cbd", "--retain-bytes", bad]).is_err(),
                "{bad}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cbd.toml");
        std::fs::write(&path, "retain = \"7d\"\nretain_bytes = \"512MiB\"\nsegment_bytes = \"16MiB\"\narchive_dir = \"/var/lib/cb/archive\"\n").unwrap();
        let args = Args::try_parse_from(["cbd", "--config", path.to_str().unwrap()]).unwrap();
        let s = Settings::resolve(args).unwrap();
        assert_eq!(s.retention.max_age, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(s.retention.max_bytes, Some(512 << 20));
        assert_eq!(s.segment_bytes, 16 << 20);
        assert_eq!(
            s.retention.archive_dir,
            Some(PathBuf::from("/var/lib/cb/archive"))
        );
        std::fs::write(&path, "retain = \"soon\"\n").unwrap();
        let args = Args::try_parse_from(["cbd", "--config", path.to_str().unwrap()]).unwrap();
        let e = Settings::resolve(args).unwrap_err().to_string();
        assert!(e.contains("retain") && e.contains("soon"), "{e}");
        let args = Args::try_parse_from(["cbd", "--segment-bytes", "1KiB"]).unwrap();
        assert!(Settings::resolve(args).is_err());
    }

    /// Every flag but --config is a key of the file, and every key a flag, spelt the same
    /// but for `-`/`_`: the help says "keys as the long flags".
    #[test]
    fn the_file_takes_every_flag() {
        use clap::CommandFactory;
        let mut flags: Vec<String> = Args::command()
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| *l != "config" && *l != "help" && *l != "version")
            .map(|l| l.replace('-', "_"))
            .collect();
        flags.sort();
        let mut keys: Vec<String> = file_keys().iter().map(|k| k.to_string()).collect();
        keys.sort();
        assert!(keys.len() > 10, "{keys:?}");
        assert_eq!(flags, keys);
    }

    #[test]
    fn the_metrics_series_bound_reads_from_flag_file_and_default() {
        let s = Settings::resolve(Args::default()).unwrap();
        assert_eq!(s.metrics_max_series, 1000);
        assert_eq!(s.dispatcher().metrics_max_series, 1000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cbd.toml");
        std::fs::write(&path, "metrics_max_series = 50\n").unwrap();
        let args = Args::try_parse_from(["cbd", "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(Settings::resolve(args).unwrap().metrics_max_series, 50);
        let args = Args::try_parse_from([
            "cbd",
            "--config",
            path.to_str().unwrap(),
            "--metrics-max-series",
            "0",
        ])
        .unwrap();
        assert_eq!(
            Settings::resolve(args)
                .unwrap()
                .dispatcher()
                .metrics_max_series,
            0
        );
        assert!(Args::try_parse_from(["cbd", "--metrics-max-series", "-1"]).is_err());
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cbd.toml");
        std::fs::write(&path, "datadir = \"x\"\n").unwrap();
        let args = Args::try_parse_from(["cbd", "--config", path.to_str().unwrap()]).unwrap();
        let e = Settings::resolve(args).unwrap_err().to_string();
        assert!(e.contains("datadir"), "{e}");
    }

    /// `--ca-file` (repeated, or a TOML string or list) and the client certificate are read
    /// when the settings are; a bad file is an error that names it.
    #[test]
    fn tls_files_are_read_with_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["receiver.example.org".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        let both = dir.path().join("client.pem");
        std::fs::write(&both, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
        let ca = ca.to_str().unwrap();
        let resolve = |args: &[&str]| Settings::resolve(Args::try_parse_from(args).unwrap());

        let s = resolve(&["cbd", "--ca-file", ca, "--ca-file", ca]).unwrap();
        assert_eq!(s.tls.roots.ca_file, 2);
        assert!(!s.tls.client_cert);
        let config = dir.path().join("cbd.toml");
        let config_str = config.to_str().unwrap();
        std::fs::write(
            &config,
            format!(
                "ca_file = {ca:?}\nclient_cert = {:?}\n",
                both.to_str().unwrap()
            ),
        )
        .unwrap();
        let s = resolve(&["cbd", "--config", config_str]).unwrap();
        assert_eq!(s.tls.roots.ca_file, 1);
        assert!(s.tls.client_cert);
        std::fs::write(&config, format!("ca_file = [{ca:?}, {ca:?}, {ca:?}]\n")).unwrap();
        let s = resolve(&["cbd", "--config", config_str]).unwrap();
        assert_eq!(s.tls.roots.ca_file, 3);

        let e = resolve(&["cbd", "--ca-file", "/no/such/ca.pem"])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--ca-file /no/such/ca.pem: cannot read it: "),
            "{e}"
        );
        // The flag replaces the file's list.
        std::fs::write(&config, "ca_file = [\"/no/such/ca.pem\"]\n").unwrap();
        assert!(resolve(&["cbd", "--config", config_str]).is_err());
        let s = resolve(&["cbd", "--config", config_str, "--ca-file", ca]).unwrap();
        assert_eq!(s.tls.roots.ca_file, 1);
    }

    #[test]
    fn a_bad_mail_sender_is_refused_at_start() {
        let args = Args::try_parse_from(["cbd", "--mail-from", "not an address"]).unwrap();
        let e = Settings::resolve(args).unwrap_err().to_string();
        assert!(e.contains("--mail-from \"not an address\""), "{e}");
        let args = Args::try_parse_from(["cbd", "--mail-from", "cb <cb@example.org>"]).unwrap();
        assert_eq!(
            Settings::resolve(args).unwrap().mail_from.as_deref(),
            Some("cb <cb@example.org>")
        );
    }
}
