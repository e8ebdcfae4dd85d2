//! Who may call the API, and for what: the admin token ([`Token`]: `CBD_TOKEN` or
//! `DIR/token`) and the scoped tokens of the tokens file (`--tokens-file`, TOML `[[token]]`
//! tables of `name`, `scope` and `sha256`).
//!
//! The tokens file never holds a token, only the hex SHA-256 of each, so a copy of it (a
//! backup, a config repository) gives no access; `cbctl token add` prints a new token once
//! and writes its hash. A caller is found by hashing what it sent and comparing the hash
//! with each entry's in constant time. The file is read at start and again on SIGHUP; a
//! file that does not read leaves the tokens in force as they were.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::token::Token;

/// What a token may do. `admin` may do everything; `read` and `ingest` one thing each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `POST /v1/changes` and `/v1/changes/batch`, nothing else: what a platform needs.
    Ingest,
    /// Every `GET` of `/v1` but `/v1/log` (which holds signing secrets), and `/metrics`:
    /// what a dashboard or a scraper needs.
    Read,
    /// Everything: callbacks, redeliveries, pauses, test sends, `/v1/log`.
    Admin,
}

impl Scope {
    /// All scopes, in the order the docs list them.
    pub const ALL: [Scope; 3] = [Scope::Ingest, Scope::Read, Scope::Admin];

    /// Whether a token of this scope may call a route that needs `needed`.
    pub fn allows(self, needed: Scope) -> bool {
        self == Scope::Admin || self == needed
    }

    /// The scope's name, as the tokens file and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a scope: give ingest, read or admin"))
    }
}

/// One scoped token, as the tokens file holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopedToken {
    /// Who holds it (`platform`, `grafana`): named in the API's log lines and refusals.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// The SHA-256 of the token.
    pub sha256: [u8; 32],
}

/// The name the admin token is known by in log lines and refusals; no file token takes it.
pub const ADMIN_NAME: &str = "admin";

/// The tokens file's form.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    #[serde(default)]
    token: Vec<EntryForm>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct EntryForm {
    name: String,
    scope: String,
    sha256: String,
}

/// Why a tokens file cannot be used. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    /// It could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not TOML of the expected form.
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// What the TOML reader said.
        source: toml::de::Error,
    },
    /// An entry is wrong.
    #[error("{path}: token {index} ({name:?}): {why}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// Which `[[token]]`, from 1.
        index: usize,
        /// Its name as written.
        name: String,
        /// What is wrong and what to write instead.
        why: String,
    },
}

/// The scoped tokens of one tokens file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokensFile {
    /// In the file's order.
    pub tokens: Vec<ScopedToken>,
}

/// Checks a token's name: 1 to 64 of letters, digits, `.`, `_` and `-`, and not the admin's.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "{name:?} is not a token name: give 1 to 64 letters, digits, '.', '_' or '-'"
        ));
    }
    if name == ADMIN_NAME {
        return Err(format!(
            "{ADMIN_NAME:?} is the name of the token in CBD_TOKEN or DIR/token: give another"
        ));
    }
    Ok(())
}

impl TokensFile {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<TokensFile, TokensFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        TokensFile::parse(&text, path)
    }

    /// Reads `path`, or an empty file if there is none (what `cbctl token add` starts from).
    pub fn read_or_empty(path: &Path) -> Result<TokensFile, TokensFileError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokensFile::default()),
            _ => TokensFile::read(path),
        }
    }

    /// Parses and checks the text of a tokens file (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<TokensFile, TokensFileError> {
        let form: FileForm = toml::from_str(text).map_err(|source| TokensFileError::Toml {
            path: path.to_owned(),
            source,
        })?;
        let mut names = BTreeSet::new();
        let mut tokens = Vec::with_capacity(form.token.len());
        for (i, entry) in form.token.into_iter().enumerate() {
            let bad = |why: String| TokensFileError::Entry {
                path: path.to_owned(),
                index: i + 1,
                name: entry.name.clone(),
                why,
            };
            check_name(&entry.name).map_err(bad)?;
            if !names.insert(entry.name.clone()) {
                return Err(bad("a second token of that name: names are unique".into()));
            }
            let scope = entry.scope.parse().map_err(bad)?;
            let sha256 = parse_sha256(&entry.sha256).map_err(bad)?;
            tokens.push(ScopedToken {
                name: entry.name.clone(),
                scope,
                sha256,
            });
        }
        Ok(TokensFile { tokens })
    }

    /// The file's text: a comment saying what it is, then one `[[token]]` table a token.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# cbd's scoped API tokens: each token's name, scope (ingest, read or admin) and the\n\
             # hex SHA-256 of the token (never the token itself). Written by `cbctl token add`\n\
             # and `cbctl token rm`; cbd reads it at start and on SIGHUP.\n",
        );
        for t in &self.tokens {
            out.push_str(&format!(
                "\n[[token]]\nname = \"{}\"\nscope = \"{}\"\nsha256 = \"{}\"\n",
                t.name,
                t.scope,
                hex::encode(t.sha256)
            ));
        }
        out
    }

    /// Writes the file whole: beside it first, then renamed into place (mode 0600), so a
    /// reader — cbd on SIGHUP — sees the old file or the new one, never half of one.
    pub fn write(&self, path: &Path) -> Result<(), TokensFileError> {
        let io = |source| TokensFileError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut temp = tempfile::Builder::new()
            .prefix(".tokens")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(&dir)
            .map_err(io)?;
        temp.write_all(self.to_toml().as_bytes()).map_err(io)?;
        // Owned as the file it replaces, or else as its directory: root editing the tokens
        // file in a data dir owned by cbd's own user must leave a file cbd can still read.
        let owner = std::fs::metadata(path).or_else(|_| std::fs::metadata(&dir));
        if let Ok(owner) = owner {
            use std::os::unix::fs::MetadataExt;
            let mine = std::fs::metadata(temp.path()).map_err(io)?;
            if (mine.uid(), mine.gid()) != (owner.uid(), owner.gid()) {
                // Only root may give a file away; anyone else writes it as their own.
                let _ =
                    std::os::unix::fs::fchown(temp.as_file(), Some(owner.uid()), Some(owner.gid()));
            }
        }
        temp.as_file().sync_all().map_err(io)?;
        temp.persist(path).map_err(|e| io(e.error))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// The hex SHA-256 of the tokens file.
fn parse_sha256(hex_text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    match hex::decode_to_slice(hex_text.trim(), &mut out) {
        Ok(()) => Ok(out),
        Err(_) => Err(format!(
            "sha256 {hex_text:?} is not 64 hex digits: give the SHA-256 of the token \
             (printf %s TOKEN | sha256sum), or let `cbctl token add` write it"
        )),
    }
}

/// The SHA-256 of a token, as the tokens file holds it.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token for `cbctl token add`: `cb_` and 48 hex digits (192 bits), a prefix
/// that says what it is to a reader and to secret scanners.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)?;
    Ok(format!("cb_{}", hex::encode(bytes)))
}

/// Who made a request, once its token was accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name ([`ADMIN_NAME`] for the admin token).
    pub name: Arc<str>,
    /// What it may do.
    pub scope: Scope,
}

/// The tokens cbd accepts now: the admin token and the tokens file's, each with the caller
/// it makes (built once here, not per request).
pub struct Credentials {
    admin: Token,
    admin_caller: Caller,
    scoped: Vec<([u8; 32], Caller)>,
}

impl Credentials {
    /// The admin token and the scoped tokens of `file`.
    pub fn new(admin: Token, file: TokensFile) -> Credentials {
        Credentials {
            admin,
            admin_caller: Caller {
                name: Arc::from(ADMIN_NAME),
                scope: Scope::Admin,
            },
            scoped: file
                .tokens
                .into_iter()
                .map(|t| {
                    let caller = Caller {
                        name: Arc::from(t.name),
                        scope: t.scope,
                    };
                    (t.sha256, caller)
                })
                .collect(),
        }
    }

    /// The same admin token with the scoped tokens of `file` (a reload).
    pub fn with_file(&self, file: TokensFile) -> Credentials {
        Credentials::new(self.admin.clone(), file)
    }

    /// How many scoped tokens there are.
    pub fn scoped_count(&self) -> usize {
        self.scoped.len()
    }

    /// The caller whose token an `Authorization` header carries, if any. Every scoped
    /// token's hash is compared, in constant time, whatever matched before.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Option<Caller> {
        let given = bearer(authorization?)?;
        if self.admin.matches(given) {
            return Some(self.admin_caller.clone());
        }
        let hash: [u8; 32] = Sha256::digest(given).into();
        let mut found = None;
        for (sha256, caller) in &self.scoped {
            if bool::from(sha256.ct_eq(&hash)) {
                found = Some(caller);
            }
        }
        found.cloned()
    }
}

/// The token of an `Authorization: Bearer` header value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Token {
        Token::load(
            Path::new("/nonexistent"),
            Some("admin-token-0123456789".into()),
        )
        .unwrap()
        .0
    }

    fn file_with(entries: &[(&str, Scope, &str)]) -> TokensFile {
        TokensFile {
            tokens: entries
                .iter()
                .map(|(name, scope, token)| ScopedToken {
                    name: (*name).into(),
                    scope: *scope,
                    sha256: token_sha256(token),
                })
                .collect(),
        }
    }

    #[test]
    fn each_token_is_its_own_caller() {
        let creds = Credentials::new(
            admin(),
            file_with(&[
                ("platform", Scope::Ingest, "cb_ingest-token-0001"),
                ("grafana", Scope::Read, "cb_read-token-00002"),
            ]),
        );
        let who = |t: &str| creds.authenticate(Some(format!("Bearer {t}").as_bytes()));
        assert_eq!(who("admin-token-0123456789").unwrap().scope, Scope::Admin);
        let p = who("cb_ingest-token-0001").unwrap();
        assert_eq!((&*p.name, p.scope), ("platform", Scope::Ingest));
        let g = who("cb_read-token-00002").unwrap();
        assert_eq!((&*g.name, g.scope), ("grafana", Scope::Read));
        assert_eq!(who("cb_unknown-token-000"), None);
        assert_eq!(creds.authenticate(None), None);
        assert_eq!(creds.authenticate(Some(b"cb_ingest-token-0001")), None);
    }

    #[test]
    fn scopes_allow_what_they_name() {
        assert!(Scope::Admin.allows(Scope::Ingest) && Scope::Admin.allows(Scope::Read));
        assert!(Scope::Ingest.allows(Scope::Ingest) && !Scope::Ingest.allows(Scope::Read));
        assert!(Scope::Read.allows(Scope::Read) && !Scope::Read.allows(Scope::Ingest));
        assert!(!Scope::Read.allows(Scope::Admin) && !Scope::Ingest.allows(Scope::Admin));
    }

    #[test]
    fn the_file_round_trips_and_bad_entries_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let file = file_with(&[
            ("platform", Scope::Ingest, "t1"),
            ("ops", Scope::Admin, "t2"),
        ]);
        file.write(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(TokensFile::read(&path).unwrap(), file);

        let bad = |text: &str| TokensFile::parse(text, &path).unwrap_err().to_string();
        let hash = hex::encode(token_sha256("t"));
        let e = bad(&format!(
            "[[token]]\nname = \"a\"\nscope = \"write\"\nsha256 = \"{hash}\"\n"
        ));
        assert!(
            e.contains("token 1 (\"a\")") && e.contains("give ingest, read or admin"),
            "{e}"
        );
        let e = bad("[[token]]\nname = \"a\"\nscope = \"read\"\nsha256 = \"abc\"\n");
        assert!(e.contains("not 64 hex digits"), "{e}");
        let e = bad(&format!(
            "[[token]]\nname = \"a\"\nscope = \"read\"\nsha256 = \"{hash}\"\n\
             [[token]]\nname = \"a\"\nscope = \"admin\"\nsha256 = \"{hash}\"\n"
        ));
        assert!(
            e.contains("token 2") && e.contains("names are unique"),
            "{e}"
        );
        let e = bad(&format!(
            "[[token]]\nname = \"admin\"\nscope = \"read\"\nsha256 = \"{hash}\"\n"
        ));
        assert!(e.contains("CBD_TOKEN"), "{e}");
        let e = bad(&format!(
            "[[token]]\nname = \"a\"\nscope = \"read\"\ntoken = \"{hash}\"\n"
        ));
        assert!(e.contains("unknown field"), "{e}");
        assert_eq!(TokensFile::parse("", &path).unwrap(), TokensFile::default());
    }

    #[test]
    fn new_tokens_differ_and_are_valid_api_tokens() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 51);
        assert!(Token::check_env(&a).is_ok());
    }
}
