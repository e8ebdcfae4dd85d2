//! Callback configuration (SPEC §3): what the operator or the change says, its defaults, and
//! its validation.
//!
//! [`CallbackSpec`] is the user-facing shape (every field optional, unknown fields rejected so
//! typos surface); [`Callback`] is the validated, defaulted form the rest of cb uses. The only
//! way from one to the other is [`CallbackSpec::validate`], and `Callback` deserializes
//! through it too, so an invalid callback cannot be read back from a log either.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::{EventKind, EventSet};
use crate::ids::{CallbackName, IdError};
use crate::signing::SigningSecret;
use crate::snapshot::is_xml_name;

/// Why a callback configuration is invalid. Each message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `url` is missing.
    #[error("url is required")]
    MissingUrl,
    /// `url` does not parse, or is not usable as a callback target.
    #[error("url {url:?} is invalid: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `method` is not POST, PUT or GET.
    #[error("method {0:?} is not supported; use POST, PUT or GET")]
    BadMethod(String),
    /// `format` is not xml, json or query.
    #[error("format {0:?} is not supported; use xml, json or query")]
    BadFormat(String),
    /// The method and format do not go together.
    #[error("method {method} cannot carry format {format}: GET sends only `query`, POST and PUT send `xml` or `json`")]
    MethodFormat {
        /// The method.
        method: Method,
        /// The format.
        format: Format,
    },
    /// One entry of `fields` is malformed.
    #[error("fields entry {entry:?} is invalid: {reason}")]
    BadField {
        /// The entry.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two `fields` entries produce the same output name.
    #[error("fields produce {0:?} twice")]
    DuplicateParam(String),
    /// Two per-file callbacks of one change have the same name.
    #[error("two callbacks are named {0:?}; a file's callbacks need distinct names")]
    DuplicateCallbackName(String),
    /// A header name is not a valid HTTP token.
    #[error("header name {0:?} is invalid")]
    BadHeaderName(String),
    /// A header value is longer than a receiver can be expected to take.
    #[error("header {name:?} has a value of {len} bytes; at most {max}")]
    HeaderValueTooLong {
        /// The header's name.
        name: String,
        /// The value's length.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// A header value has a control character (CR, LF, NUL, …).
    #[error("header {name:?} has an invalid value (control characters such as CR or LF are not allowed)")]
    BadHeaderValue {
        /// The header's name.
        name: String,
    },
    /// A header that cb itself controls.
    #[error("header {0:?} is set by cb and cannot be configured")]
    ReservedHeader(String),
    /// A number outside its bounds.
    #[error("{field} is {value}; it must be between {min} and {max}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value given.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A list longer than allowed.
    #[error("{field} has {len} entries; at most {max} are allowed")]
    TooMany {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `backoff_secs` is empty.
    #[error("backoff_secs needs at least one delay")]
    EmptyBackoff,
    /// A `secret` is malformed.
    #[error("secret is invalid: {0}")]
    BadSecret(#[from] crate::signing::SecretError),
    /// `secret` is not usable with this callback.
    #[error("secret: {0}")]
    SecretMisuse(&'static str),
    /// A field only per-file callbacks may have was given to a project callback.
    #[error("{0} applies only to per-file callbacks given with a change")]
    PerFileOnly(&'static str),
    /// A per-file callback's name is invalid.
    #[error("callback name: {0}")]
    BadName(#[from] IdError),
}

/// The HTTP method of a callback.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Method {
    /// `POST` (the default).
    #[serde(rename = "POST")]
    Post,
    /// `PUT`.
    #[serde(rename = "PUT")]
    Put,
    /// `GET`: the payload travels in the query string.
    #[serde(rename = "GET")]
    Get,
}

impl Method {
    /// The method's token.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Get => "GET",
        }
    }

    fn parse(s: &str) -> Result<Method, ConfigError> {
        match s.to_ascii_uppercase().as_str() {
            "POST" => Ok(Method::Post),
            "PUT" => Ok(Method::Put),
            "GET" => Ok(Method::Get),
            _ => Err(ConfigError::BadMethod(s.to_owned())),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the snapshot is rendered.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The getFileInfo `<result>` document.
    Xml,
    /// A JSON object.
    Json,
    /// URL query parameters.
    Query,
}

impl Format {
    /// The format's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Xml => "xml",
            Format::Json => "json",
            Format::Query => "query",
        }
    }

    fn parse(s: &str) -> Result<Format, ConfigError> {
        match s.to_ascii_lowercase().as_str() {
            "xml" => Ok(Format::Xml),
            "json" => Ok(Format::Json),
            "query" => Ok(Format::Query),
            _ => Err(ConfigError::BadFormat(s.to_owned())),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A URL as an error shows it: clipped, so a 100 KB one does not come back whole in the
/// answer and in the daemon's log.
fn shown(url: &str) -> String {
    match crate::clipped(url, 200) {
        whole if whole.len() == url.len() => url.to_owned(),
        start => format!("{start}… ({} bytes)", url.len()),
    }
}

/// Where deliveries go.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Target {
    /// An `http://` or `https://` URL, as given (validated).
    Http(String),
    /// A `mailto:` address (the part after `mailto:`).
    Mail(String),
}

impl Target {
    /// The target as the URL the user wrote.
    pub fn to_url(&self) -> String {
        match self {
            Target::Http(u) => u.clone(),
            Target::Mail(a) => format!("mailto:{a}"),
        }
    }

    /// Checks what the URL standard's parser in [`Target::parse`] would repair but an HTTP
    /// client refuses: `http:///x`, `http:x` and `http:\\x` all parse as `http://x/`, and
    /// every delivery to them would fail. The authority must be written, as RFC 3986 has
    /// it. Applied to API input, not to records already in a log (decoded, or imported from
    /// an export): they were valid under the rules they were written with, and an audit of
    /// an older log must be able to read it.
    fn check_written(&self) -> Result<(), ConfigError> {
        let Target::Http(s) = self else {
            return Ok(());
        };
        let bad = |reason: &str| ConfigError::BadUrl {
            url: shown(s),
            reason: reason.to_owned(),
        };
        let written = s.split_once(':').map_or("", |(_, rest)| rest);
        let authority = written.strip_prefix("//").unwrap_or("");
        if authority.is_empty() || authority.starts_with(['/', '\\', '?', '#']) {
            return Err(bad("no host: write it as http://host/path"));
        }
        if url::Url::parse(s).is_ok_and(|u| u.port() == Some(0)) {
            return Err(bad("port 0 cannot be connected to"));
        }
        Ok(())
    }

    fn parse(s: &str) -> Result<Target, ConfigError> {
        let bad = |reason: &str| ConfigError::BadUrl {
            url: shown(s),
            reason: reason.to_owned(),
        };
        if s.len() > 2048 {
            return Err(bad("longer than 2048 bytes"));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("contains whitespace or control characters"));
        }
        let url = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
        match url.scheme() {
            "http" | "https" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(bad("no host"));
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(bad(
                        "credentials in the URL are not supported; send them with `headers`",
                    ));
                }
                if url.fragment().is_some() {
                    return Err(bad("a fragment (#…) is never sent to a server"));
                }
                Ok(Target::Http(s.to_owned()))
            }
            "mailto" => {
                let addr = url.path();
                let addr = addr.strip_prefix("//").unwrap_or(addr);
                let valid = url.query().is_none()
                    && matches!(addr.split_once('@'), Some((l, d)) if !l.is_empty() && !d.is_empty() && !d.contains('@'))
                    && !addr.contains([',', ';', '<', '>', '%']);
                if !valid {
                    return Err(bad(
                        "mailto takes exactly one plain address, as mailto:name@example.org",
                    ));
                }
                Ok(Target::Mail(addr.to_owned()))
            }
            other => Err(bad(&format!(
                "scheme {other:?} is not supported; use http, https or mailto"
            ))),
        }
    }
}

/// One output parameter: the snapshot field `field`, emitted under the name `param`, as a
/// value of type `kind` (format `json` only; snapshot values are strings, and a receiver
/// such as LightFlow's expects `"duration": 120` and `"metadata": {}`).
///
/// Written `field`, `param=field`, either with a `:type` suffix: `duration:number`,
/// `meta=metadata:json`. Field names are XML names, so they never contain `:`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct FieldSpec {
    /// The name in the payload (element, key or query parameter).
    pub param: String,
    /// The snapshot field it takes its value from.
    pub field: String,
    /// The JSON type of the value.
    pub kind: ValueKind,
}

/// The JSON type a `fields` entry gives its value. A value that is not of that type is
/// sent as a string, and an empty one as `null`, so rendering never fails and stays a pure
/// function of the snapshot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum ValueKind {
    /// A JSON string (the default).
    #[default]
    String,
    /// A JSON number, written as the value's own digits.
    Number,
    /// `true` or `false`.
    Bool,
    /// Any JSON text (an object, a list, …), written as it is.
    Json,
}

impl ValueKind {
    fn parse(s: &str) -> Option<ValueKind> {
        match s {
            "string" => Some(ValueKind::String),
            "number" => Some(ValueKind::Number),
            "bool" => Some(ValueKind::Bool),
            "json" => Some(ValueKind::Json),
            _ => None,
        }
    }

    /// The suffix's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueKind::String => "string",
            ValueKind::Number => "number",
            ValueKind::Bool => "bool",
            ValueKind::Json => "json",
        }
    }
}

impl FieldSpec {
    fn parse(entry: &str, format: Format) -> Result<FieldSpec, ConfigError> {
        let bad = |reason| ConfigError::BadField {
            entry: entry.to_owned(),
            reason,
        };
        let (param, typed_field) = match entry.split_once('=') {
            Some((param, rest)) => (Some(param), rest),
            None => (None, entry),
        };
        let (field, kind) = match typed_field.split_once(':') {
            Some((field, kind)) => (
                field,
                ValueKind::parse(kind)
                    .ok_or_else(|| bad("the type after ':' is not string, number, bool or json"))?,
            ),
            None => (typed_field, ValueKind::String),
        };
        let param = param.unwrap_or(field);
        if param.is_empty() {
            return Err(bad("the output name is empty"));
        }
        if !is_xml_name(field) {
            return Err(bad("the snapshot field is not an XML name"));
        }
        if format == Format::Xml && !is_xml_name(param) {
            return Err(bad("the output name must be an XML name for format xml"));
        }
        if param.chars().any(char::is_control) {
            return Err(bad("the output name has control characters"));
        }
        if kind != ValueKind::String && format != Format::Json {
            return Err(bad("a value type applies to format json only"));
        }
        Ok(FieldSpec {
            param: param.to_owned(),
            field: field.to_owned(),
            kind,
        })
    }

    fn to_entry(&self) -> String {
        let mut entry = if self.param == self.field {
            self.param.clone()
        } else {
            format!("{}={}", self.param, self.field)
        };
        if self.kind != ValueKind::String {
            entry.push(':');
            entry.push_str(self.kind.as_str());
        }
        entry
    }
}

/// Which snapshot fields a payload carries, and under which names.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Projection {
    /// Every field, in snapshot order, under its own name.
    All,
    /// The listed fields, in this order; fields missing from a snapshot are left out.
    Fields(Vec<FieldSpec>),
}

/// An extra request header.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The header name.
    pub name: String,
    /// The header value.
    pub value: String,
}

/// Headers cb sets itself: framing and connection management (so a callback cannot break
/// the shared keep-alive connection) and cb's own protocol headers.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "expect",
    "cb-file-version",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// The default delays between attempts after failures (SPEC §3): 5 s, 30 s, 2 min, 10 min,
/// 30 min, 1 h, then every 2 h.
pub const DEFAULT_BACKOFF_SECS: [u32; 7] = [5, 30, 120, 600, 1800, 3600, 7200];
/// Default coalescing window.
pub const DEFAULT_WINDOW_SECS: u32 = 60;
/// Default limit of one attempt.
pub const DEFAULT_TIMEOUT_SECS: u32 = 15;
/// Default retry horizon (48 h, as Screen9).
pub const DEFAULT_RETRY_FOR_SECS: u32 = 172_800;

/// `secret` as given: one secret, or several while rotating. In JSON it is a string or a
/// list; in binary formats (the store's bincode cannot read untagged forms) always a list.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Secrets {
    /// `"whsec_…"`.
    One(String),
    /// `["whsec_new…", "whsec_old…"]`.
    Many(Vec<String>),
}

impl Serialize for Secrets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Secrets::One(one) if s.is_human_readable() => s.serialize_str(one),
            Secrets::One(one) => std::slice::from_ref(one).serialize(s),
            Secrets::Many(many) => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Secrets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secrets, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Secrets;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret (\"whsec_…\") or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secrets, E> {
                Ok(Secrets::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Secrets, A::Error> {
                let mut list = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    list.push(s);
                }
                Ok(Secrets::Many(list))
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(V)
        } else {
            let list = Vec::<String>::deserialize(d)?;
            Ok(match <[String; 1]>::try_from(list) {
                Ok([one]) => Secrets::One(one),
                Err(list) => Secrets::Many(list),
            })
        }
    }
}

impl Secrets {
    /// The configuration form of `secrets`: absent, one string, or a list.
    fn of(secrets: &[SigningSecret]) -> Option<Secrets> {
        match secrets {
            [] => None,
            [one] => Some(Secrets::One(one.as_str().to_owned())),
            many => Some(Secrets::Many(
                many.iter().map(|s| s.as_str().to_owned()).collect(),
            )),
        }
    }
}

/// The user-facing callback configuration, as given to `PUT …/callbacks/{name}` or in a
/// change's `callbacks` list. Every field but `url` is optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackSpec {
    /// `http://`, `https://` or `mailto:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `POST`, `PUT` or `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `xml`, `json` or `query`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Projection and renaming: `"name"` or `"param=field"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<Header>>,
    /// Event kinds that trigger this callback, or `["all"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventSet>,
    /// Coalescing window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
    /// Deliver the first change of a quiet file at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leading: Option<bool>,
    /// One attempt's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// How long failed deliveries are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_for_secs: Option<u64>,
    /// Delays between attempts; the last repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_secs: Option<Vec<u64>>,
    /// Standard Webhooks signing secret (`whsec_…`), or a list of them while one is rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secrets>,
    /// Per-file callbacks only: the callback's name within the file (default: its position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Per-file callbacks only: deliver on `published` (default true).
    #[serde(default, alias = "onSuccess", skip_serializing_if = "Option::is_none")]
    pub on_success: Option<bool>,
    /// Per-file callbacks only: deliver on `failed` (default true).
    #[serde(default, alias = "onFailure", skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<bool>,
    /// Per-file callbacks only: deliver on `encoding_progress` (default false).
    #[serde(
        default,
        alias = "onProgressEncoding",
        alias = "onProgress",
        skip_serializing_if = "Option::is_none"
    )]
    pub on_progress: Option<bool>,
}

/// A validated callback with every default filled in.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "CallbackRepr", into = "CallbackRepr")]
pub struct Callback {
    /// Where deliveries go.
    pub target: Target,
    /// HTTP method (ignored for mail).
    pub method: Method,
    /// Payload format.
    pub format: Format,
    /// Which fields, under which names.
    pub projection: Projection,
    /// Extra request headers.
    pub headers: Vec<Header>,
    /// Which events trigger a delivery.
    pub events: EventSet,
    /// Coalescing window `W`.
    pub window_secs: u32,
    /// `D = 0` instead of `W` for the first change of a quiet file.
    pub leading: bool,
    /// One attempt's limit.
    pub timeout_secs: u32,
    /// Retry horizon before a delivery is abandoned.
    pub retry_for_secs: u32,
    /// Delays after failures; the last repeats. Invariant: not empty.
    pub backoff_secs: Vec<u32>,
    /// Signing secrets: every HTTP request carries one signature per secret. Empty: unsigned.
    pub secrets: Vec<SigningSecret>,
}

impl Callback {
    /// True if a change of kind `event` triggers this callback (rule 2: others only update
    /// the snapshot).
    pub fn triggers(&self, event: EventKind) -> bool {
        self.events.contains(event)
    }

    /// `D` of rule 1, in seconds.
    pub fn initial_delay_secs(&self) -> u32 {
        if self.leading {
            0
        } else {
            self.window_secs
        }
    }

    /// The input rules that a stored callback is not re-held to (see
    /// [`Target::check_written`]).
    fn check_written(&self) -> Result<(), ConfigError> {
        self.target.check_written()
    }

    /// The same callback with its credentials replaced, for an export attached to a bug
    /// report: each signing secret by [`SigningSecret::redacted`], each header's value by
    /// `[redacted]` (LightFlow's `Authorization` is one). Neither reaches a digest (bodies
    /// and queries only), so a redacted log replays with the same decisions. The URL is
    /// kept: it says where deliveries went.
    pub fn redacted(&self) -> Callback {
        Callback {
            headers: self
                .headers
                .iter()
                .map(|h| Header {
                    name: h.name.clone(),
                    value: "[redacted]".to_owned(),
                })
                .collect(),
            secrets: self.secrets.iter().map(SigningSecret::redacted).collect(),
            ..self.clone()
        }
    }

    /// Parses a JSON callback configuration (a convenience for tests and tools).
    pub fn from_json(json: &str) -> Result<Callback, String> {
        let spec: CallbackSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.to_string())
    }
}

/// A per-file callback (LightFlow): a callback carried by a change, applying to that file only.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "FileCallbackRepr", into = "FileCallbackRepr")]
pub struct FileCallback {
    /// Its name within the file.
    pub name: CallbackName,
    /// The callback itself.
    pub callback: Arc<Callback>,
    /// Deliver on `published`.
    pub on_success: bool,
    /// Deliver on `failed`.
    pub on_failure: bool,
    /// Deliver on `encoding_progress`.
    pub on_progress: bool,
}

impl FileCallback {
    /// The same per-file callback with its credentials replaced ([`Callback::redacted`]).
    pub fn redacted(&self) -> FileCallback {
        FileCallback {
            callback: Arc::new(self.callback.redacted()),
            ..self.clone()
        }
    }

    /// True if a change of kind `event` triggers this callback: its `events` filter and its
    /// `on_*` switches both allow it.
    pub fn triggers(&self, event: EventKind) -> bool {
        let switch = match event {
            EventKind::Published => self.on_success,
            EventKind::Failed => self.on_failure,
            EventKind::EncodingProgress => self.on_progress,
            _ => true,
        };
        switch && self.callback.triggers(event)
    }

    /// Validates the list of per-file callbacks given with a change; unnamed ones are named
    /// after their position (`"0"`, `"1"`, …). Names must be unique.
    pub fn validate_list(specs: Vec<CallbackSpec>) -> Result<Vec<FileCallback>, ConfigError> {
        list_fits(specs.len())?;
        let mut out: Vec<FileCallback> = Vec::with_capacity(specs.len());
        for (i, mut spec) in specs.into_iter().enumerate() {
            spec.name.get_or_insert_with(|| i.to_string());
            let cb = FileCallback::try_from(spec)?;
            named_once(&out, &cb)?;
            out.push(cb);
        }
        Ok(out)
    }

    /// The rules of a list of per-file callbacks that no single one can check, for a list
    /// that arrives already built (`cbctl import`): at most [`MAX_FILE_CALLBACKS`], names
    /// unique. The core finds a file's callback by its name, so a log must never hold two.
    pub fn check_list(list: &[FileCallback]) -> Result<(), ConfigError> {
        list_fits(list.len())?;
        for (i, cb) in list.iter().enumerate() {
            named_once(&list[..i], cb)?;
        }
        Ok(())
    }
}

fn list_fits(len: usize) -> Result<(), ConfigError> {
    if len > MAX_FILE_CALLBACKS {
        return Err(ConfigError::TooMany {
            field: "callbacks",
            len,
            max: MAX_FILE_CALLBACKS,
        });
    }
    Ok(())
}

fn named_once(earlier: &[FileCallback], cb: &FileCallback) -> Result<(), ConfigError> {
    if earlier.iter().any(|o| o.name == cb.name) {
        return Err(ConfigError::DuplicateCallbackName(cb.name.to_string()));
    }
    Ok(())
}

/// Most per-file callbacks one change may carry.
pub const MAX_FILE_CALLBACKS: usize = 16;

fn bounded(
    field: &'static str,
    value: Option<u64>,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, ConfigError> {
    let v = value.unwrap_or(u64::from(default));
    if v < u64::from(min) || v > u64::from(max) {
        return Err(ConfigError::OutOfRange {
            field,
            value: v,
            min: min.into(),
            max: max.into(),
        });
    }
    // Lossless: v <= max, a u32.
    Ok(v as u32)
}

impl CallbackSpec {
    /// Validates a project callback, filling in defaults.
    pub fn validate(self) -> Result<Callback, ConfigError> {
        if self.on_success.is_some() {
            return Err(ConfigError::PerFileOnly("on_success"));
        }
        if self.on_failure.is_some() {
            return Err(ConfigError::PerFileOnly("on_failure"));
        }
        if self.on_progress.is_some() {
            return Err(ConfigError::PerFileOnly("on_progress"));
        }
        if self.name.is_some() {
            return Err(ConfigError::PerFileOnly(
                "name (a project callback is named by its URL path)",
            ));
        }
        let callback = self.validate_common()?;
        callback.check_written()?;
        Ok(callback)
    }

    fn validate_common(self) -> Result<Callback, ConfigError> {
        let target = Target::parse(self.url.as_deref().ok_or(ConfigError::MissingUrl)?)?;
        let method = self
            .method
            .as_deref()
            .map(Method::parse)
            .transpose()?
            .unwrap_or(Method::Post);
        let format = match self.format.as_deref().map(Format::parse).transpose()? {
            Some(f) => f,
            None if method == Method::Get => Format::Query,
            None => Format::Xml,
        };
        // Mail carries any format as its body; HTTP needs the method and format to agree.
        if matches!(target, Target::Http(_)) {
            let fits = match method {
                Method::Get => format == Format::Query,
                Method::Post | Method::Put => format != Format::Query,
            };
            if !fits {
                return Err(ConfigError::MethodFormat { method, format });
            }
        }
        let projection = match self.fields {
            None if format == Format::Query => Projection::Fields(
                ["mediaid=id", "status", "title"]
                    .iter()
                    .map(|e| FieldSpec::parse(e, format))
                    .collect::<Result<_, _>>()?,
            ),
            None => Projection::All,
            Some(entries) => {
                if entries.len() > MAX_FIELDS {
                    return Err(ConfigError::TooMany {
                        field: "fields",
                        len: entries.len(),
                        max: MAX_FIELDS,
                    });
                }
                let specs = entries
                    .iter()
                    .map(|e| FieldSpec::parse(e, format))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut params: Vec<&str> = specs.iter().map(|s| s.param.as_str()).collect();
                params.sort_unstable();
                if let Some(w) = params.windows(2).find(|w| w[0] == w[1]) {
                    return Err(ConfigError::DuplicateParam(w[0].to_owned()));
                }
                Projection::Fields(specs)
            }
        };
        let headers = self.headers.unwrap_or_default();
        if headers.len() > MAX_HEADERS {
            return Err(ConfigError::TooMany {
                field: "headers",
                len: headers.len(),
                max: MAX_HEADERS,
            });
        }
        for h in &headers {
            let name = http::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| ConfigError::BadHeaderName(h.name.clone()))?;
            if RESERVED_HEADERS.contains(&name.as_str()) || name.as_str().starts_with("proxy-") {
                return Err(ConfigError::ReservedHeader(h.name.clone()));
            }
            if h.value.len() > MAX_HEADER_VALUE {
                return Err(ConfigError::HeaderValueTooLong {
                    name: h.name.clone(),
                    len: h.value.len(),
                    max: MAX_HEADER_VALUE,
                });
            }
            if http::HeaderValue::from_str(&h.value).is_err() {
                return Err(ConfigError::BadHeaderValue {
                    name: h.name.clone(),
                });
            }
        }
        let backoff = self
            .backoff_secs
            .unwrap_or_else(|| DEFAULT_BACKOFF_SECS.iter().map(|&s| u64::from(s)).collect());
        if backoff.is_empty() {
            return Err(ConfigError::EmptyBackoff);
        }
        if backoff.len() > MAX_BACKOFF {
            return Err(ConfigError::TooMany {
                field: "backoff_secs",
                len: backoff.len(),
                max: MAX_BACKOFF,
            });
        }
        let backoff_secs = backoff
            .into_iter()
            .map(|s| bounded("backoff_secs entry", Some(s), 0, 1, 86_400))
            .collect::<Result<Vec<_>, _>>()?;
        let secrets = match self.secret {
            None => Vec::new(),
            Some(Secrets::One(s)) => vec![SigningSecret::parse(&s)?],
            Some(Secrets::Many(list)) => {
                if list.is_empty() || list.len() > crate::signing::MAX_SECRETS {
                    return Err(ConfigError::SecretMisuse(
                        "a list of secrets holds 1 to 4 of them (the new one first while rotating)",
                    ));
                }
                let parsed = list
                    .iter()
                    .map(|s| SigningSecret::parse(s))
                    .collect::<Result<Vec<_>, _>>()?;
                if parsed
                    .iter()
                    .enumerate()
                    .any(|(i, s)| parsed[..i].contains(s))
                {
                    return Err(ConfigError::SecretMisuse("the same secret is listed twice"));
                }
                parsed
            }
        };
        if !secrets.is_empty() && matches!(target, Target::Mail(_)) {
            return Err(ConfigError::SecretMisuse(
                "signing applies to HTTP requests; mail is not signed",
            ));
        }
        // A Standard Webhooks signature covers the body; a GET's payload is its query, which
        // the signature would not cover, so a receiver would trust a forged query.
        if !secrets.is_empty() && format == Format::Query {
            return Err(ConfigError::SecretMisuse(
                "a signature covers the body, and a GET (format query) carries its payload in the URL, unsigned: use POST or PUT with xml or json",
            ));
        }
        Ok(Callback {
            target,
            method,
            format,
            projection,
            headers,
            events: self.events.unwrap_or(EventSet::all()),
            window_secs: bounded(
                "window_secs",
                self.window_secs,
                DEFAULT_WINDOW_SECS,
                0,
                7 * 86_400,
            )?,
            leading: self.leading.unwrap_or(false),
            timeout_secs: bounded(
                "timeout_secs",
                self.timeout_secs,
                DEFAULT_TIMEOUT_SECS,
                1,
                600,
            )?,
            retry_for_secs: bounded(
                "retry_for_secs",
                self.retry_for_secs,
                DEFAULT_RETRY_FOR_SECS,
                0,
                30 * 86_400,
            )?,
            backoff_secs,
            secrets,
        })
    }
}

const MAX_FIELDS: usize = 1024;
const MAX_HEADER_VALUE: usize = 8192;
const MAX_HEADERS: usize = 32;
const MAX_BACKOFF: usize = 32;

impl TryFrom<CallbackSpec> for Callback {
    type Error = ConfigError;
    fn try_from(spec: CallbackSpec) -> Result<Callback, ConfigError> {
        spec.validate()
    }
}

/// The spec that validates back to `c`, every default spelled out.
impl From<Callback> for CallbackSpec {
    fn from(c: Callback) -> CallbackSpec {
        CallbackSpec::from(CallbackRepr::from(c))
    }
}

impl TryFrom<CallbackSpec> for FileCallback {
    type Error = ConfigError;
    fn try_from(mut spec: CallbackSpec) -> Result<FileCallback, ConfigError> {
        let name = CallbackName::new(spec.name.as_deref().unwrap_or("0"))?;
        let (on_success, on_failure, on_progress) = (
            spec.on_success.take().unwrap_or(true),
            spec.on_failure.take().unwrap_or(true),
            spec.on_progress.take().unwrap_or(false),
        );
        spec.name = None;
        let callback = spec.validate_common()?;
        callback.check_written()?;
        Ok(FileCallback {
            name,
            callback: Arc::new(callback),
            on_success,
            on_failure,
            on_progress,
        })
    }
}

impl From<FileCallback> for CallbackSpec {
    fn from(f: FileCallback) -> CallbackSpec {
        CallbackSpec {
            name: Some(f.name.to_string()),
            on_success: Some(f.on_success),
            on_failure: Some(f.on_failure),
            on_progress: Some(f.on_progress),
            ..CallbackSpec::from(Arc::unwrap_or_clone(f.callback))
        }
    }
}

/// How a validated [`Callback`] is stored (log, checkpoints): every field explicit, none
/// skipped, so binary formats that are not self-describing can read it back; reading goes
/// through [`CallbackSpec::validate`] again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CallbackRepr {
    url: String,
    method: Method,
    format: Format,
    /// `None` means every field (the projection `All`).
    fields: Option<Vec<String>>,
    headers: Vec<Header>,
    events: EventSet,
    window_secs: u32,
    leading: bool,
    timeout_secs: u32,
    retry_for_secs: u32,
    backoff_secs: Vec<u32>,
    secret: Option<Secrets>,
}

impl From<Callback> for CallbackRepr {
    fn from(c: Callback) -> CallbackRepr {
        CallbackRepr {
            url: c.target.to_url(),
            method: c.method,
            format: c.format,
            fields: match &c.projection {
                Projection::All => None,
                Projection::Fields(f) => Some(f.iter().map(FieldSpec::to_entry).collect()),
            },
            headers: c.headers,
            events: c.events,
            window_secs: c.window_secs,
            leading: c.leading,
            timeout_secs: c.timeout_secs,
            retry_for_secs: c.retry_for_secs,
            backoff_secs: c.backoff_secs,
            secret: Secrets::of(&c.secrets),
        }
    }
}

impl From<CallbackRepr> for CallbackSpec {
    fn from(r: CallbackRepr) -> CallbackSpec {
        CallbackSpec {
            url: Some(r.url),
            method: Some(r.method.as_str().to_owned()),
            format: Some(r.format.as_str().to_owned()),
            fields: r.fields,
            headers: Some(r.headers),
            events: Some(r.events),
            window_secs: Some(r.window_secs.into()),
            leading: Some(r.leading),
            timeout_secs: Some(r.timeout_secs.into()),
            retry_for_secs: Some(r.retry_for_secs.into()),
            backoff_secs: Some(r.backoff_secs.into_iter().map(u64::from).collect()),
            secret: r.secret,
            ..CallbackSpec::default()
        }
    }
}

impl TryFrom<CallbackRepr> for Callback {
    type Error = ConfigError;
    /// A stored callback: checked as it was when written, so a log (and its export) stays
    /// readable when the input rules tighten ([`Callback::check_written`] holds API input
    /// to today's).
    fn try_from(r: CallbackRepr) -> Result<Callback, ConfigError> {
        CallbackSpec::from(r).validate_common()
    }
}

/// How a validated [`FileCallback`] is stored; see [`CallbackRepr`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct FileCallbackRepr {
    name: CallbackName,
    on_success: bool,
    on_failure: bool,
    on_progress: bool,
    callback: CallbackRepr,
}

impl From<FileCallback> for FileCallbackRepr {
    fn from(f: FileCallback) -> FileCallbackRepr {
        FileCallbackRepr {
            name: f.name,
            on_success: f.on_success,
            on_failure: f.on_failure,
            on_progress: f.on_progress,
            callback: CallbackRepr::from(Arc::unwrap_or_clone(f.callback)),
        }
    }
}

impl TryFrom<FileCallbackRepr> for FileCallback {
    type Error = ConfigError;
    fn try_from(r: FileCallbackRepr) -> Result<FileCallback, ConfigError> {
        Ok(FileCallback {
            name: r.name,
            on_success: r.on_success,
            on_failure: r.on_failure,
            on_progress: r.on_progress,
            callback: Arc::new(Callback::try_from(r.callback)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Callback, String> {
        Callback::from_json(json)
    }

    /// A redacted callback keeps everything but its credentials, and stays valid: a rotation
    /// list keeps distinct secrets, and the same secret always gets the same stand-in.
    #[test]
    fn redaction_replaces_credentials_only() {
        const A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        const B: &str = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXkgISE=";
        let cb = parse(&format!(
            r#"{{"url":"https://a.example/cb","secret":["{A}","{B}"],
                "headers":[{{"name":"Authorization","value":"Bearer t0k"}}]}}"#
        ))
        .unwrap();
        let r = cb.redacted();
        assert_eq!(r.headers[0].name, "Authorization");
        assert_eq!(r.headers[0].value, "[redacted]");
        assert_eq!(r.secrets.len(), 2);
        assert_ne!(r.secrets[0], r.secrets[1]);
        assert!(r.secrets.iter().all(|s| s.as_str() != A && s.as_str() != B));
        assert_eq!(r.secrets[0], cb.redacted().secrets[0]);
        let back = serde_json::to_value(&r).unwrap();
        let again: Callback = serde_json::from_value(back).unwrap();
        assert_eq!(again, r, "a redacted callback is a valid one");
        assert_eq!(
            Callback {
                headers: vec![],
                secrets: vec![],
                ..r
            },
            Callback {
                headers: vec![],
                secrets: vec![],
                ..cb
            },
            "nothing else changes"
        );
    }

    /// An error echoes a URL clipped: a 100 KB one does not come back whole.
    #[test]
    fn a_huge_url_is_clipped_in_its_error() {
        let json = format!(r#"{{"url":"http://x.org/{}"}}"#, "a".repeat(100_000));
        let err = parse(&json).unwrap_err();
        assert!(
            err.len() < 400 && err.contains("100013 bytes") && err.contains("2048"),
            "{err}"
        );
        let long = format!(
            r#"{{"url":"http://x.org/","headers":[{{"name":"X-A","value":"{}"}}]}}"#,
            "a".repeat(9000)
        );
        let err = parse(&long).unwrap_err();
        assert!(
            err.contains("9000 bytes; at most 8192"),
            "the reason is the length: {err}"
        );
    }

    /// Tightened input rules do not make a log unreadable: a stored callback decodes under
    /// the rules it was written with, and `check_written` is what holds input to today's.
    #[test]
    fn a_stored_callback_keeps_the_rules_it_was_written_under() {
        let mut v = serde_json::to_value(parse(r#"{"url":"http://x.org/"}"#).unwrap()).unwrap();
        v["url"] = "http:///x".into();
        let stored: Callback = serde_json::from_value(v).unwrap();
        let err = stored.check_written().unwrap_err().to_string();
        assert!(err.contains("no host"), "{err}");
        assert!(parse(r#"{"url":"http:///x"}"#).is_err());
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = parse(r#"{"url":"https://example.org/cb"}"#).unwrap();
        assert_eq!(c.method, Method::Post);
        assert_eq!(c.format, Format::Xml);
        assert_eq!(c.projection, Projection::All);
        assert!(c.events.is_all());
        assert_eq!(
            (c.window_secs, c.leading, c.timeout_secs, c.retry_for_secs),
            (60, false, 15, 172_800)
        );
        assert_eq!(c.backoff_secs, DEFAULT_BACKOFF_SECS);
        let g = parse(r#"{"url":"http://cms.example.com","method":"get"}"#).unwrap();
        assert_eq!(g.format, Format::Query);
        assert_eq!(
            g.projection,
            Projection::Fields(vec![
                FieldSpec {
                    param: "mediaid".into(),
                    field: "id".into(),
                    kind: ValueKind::String,
                },
                FieldSpec {
                    param: "status".into(),
                    field: "status".into(),
                    kind: ValueKind::String,
                },
                FieldSpec {
                    param: "title".into(),
                    field: "title".into(),
                    kind: ValueKind::String,
                },
            ])
        );
    }

    #[test]
    fn rejects_what_cannot_work() {
        let cases = [
            (r#"{}"#, "url is required"),
            (r#"{"url":"ftp://x.org/"}"#, "scheme \"ftp\""),
            (r#"{"url":"http://"}"#, "invalid"),
            (r#"{"url":"http:///x"}"#, "no host"),
            (r#"{"url":"http://x.org:0/cb"}"#, "port 0"),
            (r#"{"url":"http:x.org/cb"}"#, "no host"),
            (r#"{"url":"https:/x.org/cb"}"#, "no host"),
            (r#"{"url":"http:\\\\x.org/cb"}"#, "no host"),
            (r#"{"url":"http://u:p@x.org/"}"#, "credentials"),
            (r#"{"url":"mailto:nobody"}"#, "exactly one plain address"),
            (
                r#"{"url":"http://x.org/","method":"DELETE"}"#,
                "method \"DELETE\"",
            ),
            (
                r#"{"url":"http://x.org/","method":"GET","format":"xml"}"#,
                "cannot carry",
            ),
            (
                r#"{"url":"http://x.org/","format":"query"}"#,
                "cannot carry",
            ),
            (
                r#"{"url":"http://x.org/","fields":["a=1b"]}"#,
                "not an XML name",
            ),
            (r#"{"url":"http://x.org/","fields":["a","a"]}"#, "twice"),
            (
                r#"{"url":"http://x.org/","headers":[{"name":"X-A","value":"a\r\nb"}]}"#,
                "invalid value",
            ),
            (
                r#"{"url":"http://x.org/","headers":[{"name":"X A","value":"a"}]}"#,
                "header name",
            ),
            (
                r#"{"url":"http://x.org/","headers":[{"name":"Host","value":"a"}]}"#,
                "set by cb",
            ),
            (
                r#"{"url":"http://x.org/","window_secs":999999999}"#,
                "window_secs",
            ),
            (
                r#"{"url":"http://x.org/","timeout_secs":0}"#,
                "timeout_secs",
            ),
            (
                r#"{"url":"http://x.org/","backoff_secs":[]}"#,
                "at least one",
            ),
            (
                r#"{"url":"http://x.org/","backoff_secs":[0]}"#,
                "backoff_secs entry",
            ),
            (
                r#"{"url":"http://x.org/","events":["nope"]}"#,
                "unknown event",
            ),
            (r#"{"url":"http://x.org/","on_success":true}"#, "per-file"),
            (r#"{"url":"http://x.org/","colour":"red"}"#, "unknown field"),
        ];
        for (json, want) in cases {
            let err = parse(json).expect_err(json);
            assert!(err.contains(want), "{json}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn file_callbacks_accept_lightflow_names() {
        let specs: Vec<CallbackSpec> = serde_json::from_str(
            r#"[{"url":"https://callback.epiclabs/ingest","headers":[{"name":"Authorization","value":"Bearer t"}],"method":"POST","onSuccess":false},
                {"url":"mailto:johndoe@epiclabs.io","onProgressEncoding":true}]"#,
        )
        .unwrap();
        let list = FileCallback::validate_list(specs).unwrap();
        assert_eq!(list[0].name.as_str(), "0");
        assert!(!list[0].triggers(EventKind::Published));
        assert!(list[0].triggers(EventKind::Failed));
        assert!(!list[0].triggers(EventKind::EncodingProgress));
        assert_eq!(
            list[1].callback.target,
            Target::Mail("johndoe@epiclabs.io".into())
        );
        assert!(list[1].triggers(EventKind::EncodingProgress));
    }

    #[test]
    fn serde_round_trip_is_identity() {
        let c = parse(
            r#"{"url":"http://cms.example.com","method":"GET","fields":["status","userid=uid","message","mediaid=id","title"],"events":["uploaded","cloned"],"window_secs":0,"leading":true,"backoff_secs":[1,2]}"#,
        )
        .unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back: Callback = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn secrets_one_or_a_list_round_trip_and_bad_ones_are_named() {
        const A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        const B: &str = "whsec_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
        let one = parse(&format!(r#"{{"url":"https://a.example","secret":"{A}"}}"#)).unwrap();
        assert_eq!(one.secrets.len(), 1);
        let two = parse(&format!(
            r#"{{"url":"https://a.example","secret":["{B}","{A}"]}}"#
        ))
        .unwrap();
        assert_eq!(
            two.secrets.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            [B, A],
            "kept in the order given"
        );
        for c in [&one, &two] {
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(
                &serde_json::from_str::<Callback>(&json).unwrap(),
                c,
                "{json}"
            );
        }
        assert!(serde_json::to_string(&one)
            .unwrap()
            .contains(&format!(r#""secret":"{A}""#)));
        let unsigned = parse(r#"{"url":"https://a.example"}"#).unwrap();
        assert!(serde_json::to_string(&unsigned)
            .unwrap()
            .contains(r#""secret":null"#));
        for (json, says) in [
            (
                r#"{"url":"https://a.example","secret":"hunter2"}"#,
                "whsec_",
            ),
            (
                r#"{"url":"https://a.example","secret":"whsec_%%%"}"#,
                "base64",
            ),
            (
                r#"{"url":"https://a.example","secret":"whsec_c2hvcnQ="}"#,
                "24 to 64 bytes",
            ),
            (
                r#"{"url":"https://a.example","secret":"whsec_… (sha256 3e1fdca4)"}"#,
                "the fingerprint the API shows",
            ),
            (r#"{"url":"https://a.example","secret":[]}"#, "1 to 4"),
            (
                &format!(r#"{{"url":"https://a.example","secret":["{A}","{A}"]}}"#),
                "twice",
            ),
            (
                &format!(r#"{{"url":"mailto:a@example.org","secret":"{A}"}}"#),
                "mail is not signed",
            ),
            (
                &format!(r#"{{"url":"https://a.example","method":"GET","secret":"{A}"}}"#),
                "unsigned",
            ),
        ] {
            let e = parse(json).unwrap_err().to_string();
            assert!(e.contains(says), "{json}: {e}");
        }
    }
}
