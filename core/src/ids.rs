//! Identifiers and scalar newtypes: projects, files, callbacks, sequence numbers, timestamps,
//! delivery ids and the composite keys built from them.
//!
//! The id grammars of SPEC §3 are enforced here, once: a value of one of these types is valid
//! by construction, and deserialization goes through the same check, so no invalid id can
//! enter the core from a request, a log record or a checkpoint.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smol_str::SmolStr;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A list cursor that is not `project~callback~file_id`.
    #[error("a cursor is `project~callback~file_id`, as a list's `next` gives it")]
    Cursor,
    /// The identifier is the empty string.
    #[error("{kind} is empty")]
    Empty {
        /// Which identifier (e.g. "project").
        kind: &'static str,
    },
    /// The identifier is longer than its grammar allows.
    #[error("{kind} is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// Which identifier.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The identifier holds a character outside `[A-Za-z0-9_.-]`.
    #[error("{kind} contains {found:?}; only A-Z a-z 0-9 _ . - are allowed")]
    BadChar {
        /// Which identifier.
        kind: &'static str,
        /// The first offending character.
        found: char,
    },
}

fn check_id(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(IdError::BadChar { kind, found });
    }
    // Only ASCII is left, so bytes == characters.
    if s.len() > max {
        return Err(IdError::TooLong {
            kind,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

/// A serde visitor that parses a string where the deserializer has it, borrowed or not:
/// decoding a record allocates no `String` for its identifiers (`Cow`'s own `Deserialize`
/// always copies, and that was a tenth of decoding a log).
pub(crate) struct ParseStr<F>(pub(crate) &'static str, pub(crate) F);

impl<'de, T, E, F> serde::de::Visitor<'de> for ParseStr<F>
where
    F: FnOnce(&str) -> Result<T, E>,
    E: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} as a string", self.0)
    }

    fn visit_str<Er: serde::de::Error>(self, v: &str) -> Result<T, Er> {
        (self.1)(v).map_err(Er::custom)
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(SmolStr);

        impl $name {
            /// The longest valid value, in characters.
            pub const MAX_LEN: usize = $max;

            /// Validates `s` against the grammar `[A-Za-z0-9_.-]{1,MAX_LEN}`.
            pub fn new(s: &str) -> Result<Self, IdError> {
                check_id($kind, s, $max)?;
                Ok(Self(SmolStr::new(s)))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// A bound above every valid value (U+007F sorts after the whole grammar), for
            /// seeking past a prefix in an ordered index. Never a value of its own.
            #[allow(dead_code)] // not every id type bounds a list seek
            pub(crate) fn above_all() -> Self {
                Self(SmolStr::new_static("\u{7f}"))
            }

            /// A bound below every valid value (they are never empty).
            #[allow(dead_code)]
            pub(crate) fn below_all() -> Self {
                Self(SmolStr::default())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(ParseStr($kind, Self::new))
            }
        }
    };
}

string_id!(
    /// A customer site (tenant): `[A-Za-z0-9_.-]{1,64}`.
    ProjectId,
    "project",
    64
);
string_id!(
    /// A media file within a project: `[A-Za-z0-9_.-]{1,128}`.
    FileId,
    "file id",
    128
);
string_id!(
    /// A callback's name within its project (or within one file, for per-file callbacks):
    /// `[A-Za-z0-9_.-]{1,64}`.
    CallbackName,
    "callback name",
    64
);

/// A log sequence number. Dense and increasing in the log; a file's *version* is the sequence
/// number of its latest change.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A wall-clock instant in milliseconds since the Unix epoch, as stamped on a record when it
/// was appended. The core never reads a clock: every `Timestamp` it sees came from a record.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// This instant plus `ms` milliseconds, saturating at the far future.
    #[must_use]
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// This instant plus `secs` seconds, saturating at the far future.
    #[must_use]
    pub fn plus_secs(self, secs: u32) -> Timestamp {
        self.plus_ms(u64::from(secs) * 1000)
    }

    /// Milliseconds from `earlier` to `self`, or 0 if `earlier` is later.
    pub fn ms_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One media file: `(project, file_id)`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct FileKey {
    /// The project the file belongs to.
    pub project: ProjectId,
    /// The file's id within the project.
    pub file_id: FileId,
}

impl FileKey {
    /// Builds a key from its parts.
    pub fn new(project: ProjectId, file_id: FileId) -> Self {
        Self { project, file_id }
    }

    /// Parses `PROJECT/FILE_ID`, the form the CLI and the API paths use.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let (p, f) = s
            .split_once('/')
            .ok_or(IdError::Empty { kind: "file id" })?;
        Ok(Self::new(ProjectId::new(p)?, FileId::new(f)?))
    }
}

impl fmt::Display for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.project, self.file_id)
    }
}

/// Which callback a delivery machine serves: one of the project's callbacks, or one of the
/// per-file callbacks a change carried (LightFlow).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackRef {
    /// `PUT /v1/projects/{project}/callbacks/{name}`.
    Project(CallbackName),
    /// A callback given with a change, applying to that file only.
    File(CallbackName),
}

impl CallbackRef {
    /// Parses the [`Display`](fmt::Display) form: `name` for a project callback,
    /// `file:name` for a per-file one (`:` is not part of the name grammar, so the two
    /// never collide).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        match s.strip_prefix("file:") {
            Some(name) => Ok(CallbackRef::File(CallbackName::new(name)?)),
            None => Ok(CallbackRef::Project(CallbackName::new(s)?)),
        }
    }

    /// The callback's name, whatever its scope.
    pub fn name(&self) -> &CallbackName {
        match self {
            CallbackRef::Project(n) | CallbackRef::File(n) => n,
        }
    }
}

impl fmt::Display for CallbackRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallbackRef::Project(n) => write!(f, "{n}"),
            CallbackRef::File(n) => write!(f, "file:{n}"),
        }
    }
}

/// One delivery state machine: a (file, callback) pair.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct MachineKey {
    /// The file.
    pub file: FileKey,
    /// The callback.
    pub callback: CallbackRef,
}

impl fmt::Display for MachineKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.file, self.callback)
    }
}

/// A delivery: one effort to bring a machine's receiver up to date, from its first attempt
/// through its retries. Identified by the sequence number of the record that opened it (the
/// triggering change, or the operator's redeliver). Within one machine at most one delivery
/// opens per record, so `(MachineKey, DeliveryId)` is unique in a log — and, unlike a
/// counter, it is the same whether the whole log or only one file's records are folded.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct DeliveryId(pub Seq);

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_ref_round_trips_its_display_form() {
        for s in ["hook", "file:hook", "file:file"] {
            assert_eq!(CallbackRef::parse(s).unwrap().to_string(), s);
        }
        assert!(CallbackRef::parse("file:").is_err());
        assert!(CallbackRef::parse("a:b").is_err());
    }

    #[test]
    fn id_grammar() {
        assert!(ProjectId::new("acme.tv_2-x").is_ok());
        assert_eq!(ProjectId::new(""), Err(IdError::Empty { kind: "project" }));
        assert_eq!(
            FileId::new("a/b"),
            Err(IdError::BadChar {
                kind: "file id",
                found: '/'
            })
        );
        assert!(FileId::new(&"x".repeat(128)).is_ok());
        assert!(matches!(
            FileId::new(&"x".repeat(129)),
            Err(IdError::TooLong { len: 129, .. })
        ));
        assert!(matches!(
            CallbackName::new("é"),
            Err(IdError::BadChar { found: 'é', .. })
        ));
    }

    #[test]
    fn deserialization_validates() {
        let ok: ProjectId = serde_json::from_str("\"p1\"").unwrap();
        assert_eq!(ok.as_str(), "p1");
        let err = serde_json::from_str::<ProjectId>("\"p 1\"").unwrap_err();
        assert!(err.to_string().contains("only A-Z"), "{err}");
    }

    #[test]
    fn file_key_parse() {
        let k = FileKey::parse("acme/556114").unwrap();
        assert_eq!(k.to_string(), "acme/556114");
        assert!(FileKey::parse("acme").is_err());
        assert!(FileKey::parse("acme/5/6").is_err());
    }
}
