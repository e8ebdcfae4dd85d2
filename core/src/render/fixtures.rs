//! Shared fixtures (tests, benchmarks, docs): the getFileInfo sample of seed 001 (Filemobile's "Media Callback"
//! page), both as the verbatim document and as the snapshot it stands for, so the renderer
//! and the ingest parser are checked against the same independent source of truth.

use crate::snapshot::Snapshot;

/// The `<?xml …?>` … `</result>` block of seed 001, byte for byte — including the stray `i`
/// after `</user_lastname>`, which real senders produce and ingest must tolerate.
pub const SEED_001_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<result>
  <id>556114</id>
  <status>3</status>
  <contenttype>image/jpeg</contenttype>
  <filetype>1</filetype>
  <filename>Yankees-Should-Definitely-Sign-Guy.jpg</filename>
  <injector>httpupload</injector>
  <hits>0</hits>
  <message></message>
  <date>2009-01-31 22:11:18</date>
  <title>Test 7 : single + empty</title>
  <tags></tags>
  <extension>jpg</extension>
  <sender></sender>
  <uid>1543</uid>
  <filesize>30191</filesize>
  <ofilesize>113111</ofilesize>
  <upload>2009-01-31 22:11:18</upload>
  <privacy>1</privacy>
  <moderationstatus>0</moderationstatus>
  <width>0</width>
  <height>0</height>
  <length>0.00</length>
  <conversiontime>3.808</conversiontime>
  <converttime>2009-02-04 12:17:41</converttime>
  <offensive>0</offensive>
  <autoblog>0</autoblog>
  <rating>0</rating>
  <votecount>0</votecount>
  <commentcount>0</commentcount>
  <approvedcomments>0</approvedcomments>
  <notdeniedcomments>0</notdeniedcomments>
  <parentid>0</parentid>
  <user_name>evert</user_name>
  <user_country>CA</user_country>
  <user_city>Toronto</user_city>
  <user_state></user_state>
  <user_nickname>Evert</user_nickname>
  <user_firstname>エヴァート</user_firstname>
  <user_lastname>ぽつ</user_lastname>i
  <url></url>
  <vhost>16</vhost>
  <rotation>0</rotation>
  <language></language>
  <channel>340</channel>
  <channel_shortname>mychannel</channel_shortname>
  <channel_name>Testing</channel_name>
  <geo_latitude/>
  <geo_longitude/>
  <externalid/>
  <publicUrl>http://fmdevs3.filemobile.com/storage/556114</publicUrl>
  <thumbUrl>http://fmdev.s3.amazonaws.com/storage/556114</thumbUrl>
  <moderationdeniedid>0</moderationdeniedid>
</result>
"#;

/// The fields of [`SEED_001_XML`], in document order, listed literally rather than parsed
/// so that a parser bug cannot hide in both sides of a comparison.
pub const SEED_001_FIELDS: [(&str, &str); 52] = [
    ("id", "556114"),
    ("status", "3"),
    ("contenttype", "image/jpeg"),
    ("filetype", "1"),
    ("filename", "Yankees-Should-Definitely-Sign-Guy.jpg"),
    ("injector", "httpupload"),
    ("hits", "0"),
    ("message", ""),
    ("date", "2009-01-31 22:11:18"),
    ("title", "Test 7 : single + empty"),
    ("tags", ""),
    ("extension", "jpg"),
    ("sender", ""),
    ("uid", "1543"),
    ("filesize", "30191"),
    ("ofilesize", "113111"),
    ("upload", "2009-01-31 22:11:18"),
    ("privacy", "1"),
    ("moderationstatus", "0"),
    ("width", "0"),
    ("height", "0"),
    ("length", "0.00"),
    ("conversiontime", "3.808"),
    ("converttime", "2009-02-04 12:17:41"),
    ("offensive", "0"),
    ("autoblog", "0"),
    ("rating", "0"),
    ("votecount", "0"),
    ("commentcount", "0"),
    ("approvedcomments", "0"),
    ("notdeniedcomments", "0"),
    ("parentid", "0"),
    ("user_name", "evert"),
    ("user_country", "CA"),
    ("user_city", "Toronto"),
    ("user_state", ""),
    ("user_nickname", "Evert"),
    ("user_firstname", "エヴァート"),
    ("user_lastname", "ぽつ"),
    ("url", ""),
    ("vhost", "16"),
    ("rotation", "0"),
    ("language", ""),
    ("channel", "340"),
    ("channel_shortname", "mychannel"),
    ("channel_name", "Testing"),
    ("geo_latitude", ""),
    ("geo_longitude", ""),
    ("externalid", ""),
    ("publicUrl", "http://fmdevs3.filemobile.com/storage/556114"),
    ("thumbUrl", "http://fmdev.s3.amazonaws.com/storage/556114"),
    ("moderationdeniedid", "0"),
];

/// [`SEED_001_FIELDS`] as a snapshot.
pub fn seed_001_snapshot() -> Snapshot {
    Snapshot::from_pairs(SEED_001_FIELDS).expect("the seed sample is a valid snapshot")
}
