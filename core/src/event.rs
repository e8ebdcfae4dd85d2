//! The twelve event kinds of the seed platforms, and sets of them (a callback's `events`
//! filter).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What happened to a file. Unknown kinds are rejected at the boundary (SPEC §3).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[repr(u8)]
pub enum EventKind {
    /// Filemobile: a user rated the file.
    Rated = 0,
    /// Filemobile: the file was moderated (approved or denied).
    Moderated,
    /// Filemobile: transcoding finished.
    Transcoded,
    /// Filemobile: an external id arrived (Brightcove).
    Externalid,
    /// Screen9: a new upload became successful.
    Uploaded,
    /// Screen9: a clone was created.
    Cloned,
    /// Screen9: a live event was registered.
    LiveRegistered,
    /// Screen9: metadata was edited in the console.
    MetadataEdited,
    /// Screen9: the media was deleted.
    Deleted,
    /// LightFlow: the asset was published successfully.
    Published,
    /// LightFlow: publishing failed.
    Failed,
    /// LightFlow: an encoding task completed.
    EncodingProgress,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 12] = [
        EventKind::Rated,
        EventKind::Moderated,
        EventKind::Transcoded,
        EventKind::Externalid,
        EventKind::Uploaded,
        EventKind::Cloned,
        EventKind::LiveRegistered,
        EventKind::MetadataEdited,
        EventKind::Deleted,
        EventKind::Published,
        EventKind::Failed,
        EventKind::EncodingProgress,
    ];

    /// The wire name (`live_registered`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Rated => "rated",
            EventKind::Moderated => "moderated",
            EventKind::Transcoded => "transcoded",
            EventKind::Externalid => "externalid",
            EventKind::Uploaded => "uploaded",
            EventKind::Cloned => "cloned",
            EventKind::LiveRegistered => "live_registered",
            EventKind::MetadataEdited => "metadata_edited",
            EventKind::Deleted => "deleted",
            EventKind::Published => "published",
            EventKind::Failed => "failed",
            EventKind::EncodingProgress => "encoding_progress",
        }
    }
}

/// An event name that is not one of the twelve kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event {0:?}; known events are rated, moderated, transcoded, externalid, uploaded, cloned, live_registered, metadata_edited, deleted, published, failed, encoding_progress")]
pub struct UnknownEvent(pub String);

impl FromStr for EventKind {
    type Err = UnknownEvent;
    fn from_str(s: &str) -> Result<Self, UnknownEvent> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownEvent(s.to_owned()))
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(crate::ids::ParseStr("event kind", str::parse::<EventKind>))
    }
}

/// A set of event kinds; serialized as a list of names, `["all"]` for every kind.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventSet(u16);

impl EventSet {
    const ALL_BITS: u16 = (1 << EventKind::ALL.len()) - 1;

    /// Every kind.
    pub const fn all() -> Self {
        EventSet(Self::ALL_BITS)
    }

    /// No kind.
    pub const fn empty() -> Self {
        EventSet(0)
    }

    /// True if `kind` is in the set.
    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & (1 << kind as u8) != 0
    }

    /// The set with `kind` added.
    #[must_use]
    pub fn with(self, kind: EventKind) -> Self {
        EventSet(self.0 | (1 << kind as u8))
    }

    /// True if the set has every kind.
    pub fn is_all(self) -> bool {
        self.0 == Self::ALL_BITS
    }

    /// True if the set has no kind.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = EventKind> {
        EventKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

impl FromIterator<EventKind> for EventSet {
    fn from_iter<I: IntoIterator<Item = EventKind>>(iter: I) -> Self {
        iter.into_iter().fold(EventSet::empty(), EventSet::with)
    }
}

impl fmt::Debug for EventSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("[all]");
        }
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for EventSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_all() {
            // A slice, not an array: an array is a fixed-size tuple to serde, which binary
            // formats write without the length the reader expects.
            return ["all"][..].serialize(s);
        }
        // A sequence of known length: binary formats (the log's bincode) need it up front.
        let names: Vec<&str> = self.iter().map(EventKind::as_str).collect();
        names.serialize(s)
    }
}

impl<'de> Deserialize<'de> for EventSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut set = EventSet::empty();
        for n in &names {
            if n == "all" {
                set = EventSet::all();
            } else {
                set = set.with(n.parse().map_err(serde::de::Error::custom)?);
            }
        }
        if set.is_empty() {
            return Err(serde::de::Error::custom(
                "events must name at least one event kind, or \"all\"",
            ));
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
        }
        assert!("renamed".parse::<EventKind>().is_err());
    }

    #[test]
    fn sets() {
        let s: EventSet = serde_json::from_str(r#"["uploaded","deleted"]"#).unwrap();
        assert!(s.contains(EventKind::Uploaded) && s.contains(EventKind::Deleted));
        assert!(!s.contains(EventKind::Rated));
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"["uploaded","deleted"]"#
        );
        let all: EventSet = serde_json::from_str(r#"["all"]"#).unwrap();
        assert!(all.is_all());
        assert_eq!(serde_json::to_string(&all).unwrap(), r#"["all"]"#);
        assert!(serde_json::from_str::<EventSet>("[]").is_err());
        assert!(serde_json::from_str::<EventSet>(r#"["nope"]"#)
            .unwrap_err()
            .to_string()
            .contains("unknown event"));
    }
}
