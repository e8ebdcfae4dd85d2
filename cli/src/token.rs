//! The API token: from `CBD_TOKEN`, or generated once into `DIR/token` (mode 0600).
//!
//! Comparison is constant-time so the token cannot be guessed byte by byte from response
//! times.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// Where the token came from, for the startup message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The `CBD_TOKEN` environment variable.
    Env,
    /// An existing token file.
    File(PathBuf),
    /// A token generated now into this file.
    Generated(PathBuf),
}

/// The bearer token every `/v1` request must carry.
#[derive(Clone)]
pub struct Token(String);

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token is empty or has characters a header cannot carry.
    #[error("the token {0} must be 16 to 256 visible ASCII characters")]
    Invalid(&'static str),
    /// No randomness for a new token.
    #[error("no randomness for a new token: {0}")]
    Random(String),
}

impl Token {
    /// Checks a `CBD_TOKEN` value as [`Token::load`] will, so cbd can refuse a bad one before
    /// it opens (or creates) its data dir. An empty value means "not set".
    pub fn check_env(value: &str) -> Result<(), TokenError> {
        if value.is_empty() {
            return Ok(());
        }
        Token::checked(value.to_owned(), "in CBD_TOKEN").map(drop)
    }

    /// The token from `env` (the value of `CBD_TOKEN`) if set, else from `DIR/token`,
    /// creating it with a fresh random token if it does not exist.
    pub fn load(dir: &Path, env: Option<String>) -> Result<(Token, Source), TokenError> {
        if let Some(t) = env.filter(|t| !t.is_empty()) {
            return Ok((Token::checked(t, "in CBD_TOKEN")?, Source::Env));
        }
        let path = dir.join("token");
        let io = |source| TokenError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the token file is readable by others; chmod 600 it");
                }
                Ok((
                    Token::checked(text.trim().to_owned(), "in DIR/token")?,
                    Source::File(path),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 24];
                getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
                let token = hex_string(&bytes);
                // Written aside and renamed into place, so a crash never leaves an empty
                // token file behind (which would stop every later start).
                let temp = dir.join("token.tmp");
                let _ = std::fs::remove_file(&temp);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&temp)
                    .map_err(io)?;
                f.write_all(format!("{token}\n").as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                std::fs::rename(&temp, &path).map_err(io)?;
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                Ok((Token(token), Source::Generated(path)))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn checked(t: String, what: &'static str) -> Result<Token, TokenError> {
        if t.len() < 16 || t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Invalid(what));
        }
        Ok(Token(t))
    }

    /// True if an `Authorization` header value carries this token.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some(given) = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
        else {
            return false;
        };
        self.matches(given)
    }

    /// True if `given` is this token (compared in constant time).
    pub fn matches(&self, given: &[u8]) -> bool {
        given.ct_eq(self.0.as_bytes()).into()
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_with_mode_0600_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (t1, s1) = Token::load(dir.path(), None).unwrap();
        assert!(matches!(s1, Source::Generated(_)));
        let mode = std::fs::metadata(dir.path().join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (t2, s2) = Token::load(dir.path(), None).unwrap();
        assert!(matches!(s2, Source::File(_)));
        assert_eq!(t1.0, t2.0);
        assert!(t1.accepts(Some(format!("Bearer {}", t1.0).as_bytes())));
        assert!(!t1.accepts(Some(b"Bearer nope")));
        assert!(!t1.accepts(None));
        assert!(!t1.accepts(Some(t1.0.as_bytes())));
    }

    #[test]
    fn env_wins_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (t, s) = Token::load(dir.path(), Some("0123456789abcdef".into())).unwrap();
        assert_eq!(s, Source::Env);
        assert!(t.accepts(Some(b"Bearer 0123456789abcdef")));
        assert!(Token::load(dir.path(), Some("short".into())).is_err());
        assert!(!dir.path().join("token").exists());
    }
}
