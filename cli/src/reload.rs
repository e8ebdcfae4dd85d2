//! What cbd reads again on SIGHUP without a restart: the tokens file and the API's TLS
//! certificate and key, so a token can be added or revoked and a certificate renewed while
//! deliveries go on.
//!
//! Each is held in a [`Current`], which a request reads once (an `Arc` clone under a read
//! lock held for no longer) and a reload replaces whole. A reload that fails for one of
//! them keeps what was in force for that one and says why; the other is still replaced.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::TlsAcceptor;

use crate::credentials::{TokensFile, TokensFileError};

/// A value replaced whole at reload, read by every request.
pub struct Current<T>(RwLock<Arc<T>>);

impl<T> Current<T> {
    /// Holds `value`.
    pub fn new(value: T) -> Current<T> {
        Current(RwLock::new(Arc::new(value)))
    }

    /// What is in force now.
    pub fn get(&self) -> Arc<T> {
        // A panic while the lock was held (there is no code that could) leaves the value
        // whole: it is only ever replaced by one store.
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `value` in force for the requests that read it from now on.
    pub fn set(&self, value: T) {
        let value = Arc::new(value);
        match self.0.write() {
            Ok(mut guard) => *guard = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

/// Where the scoped tokens come from: `--tokens-file`, or else `DIR/tokens.toml` if it
/// exists (where `cbctl token add` writes by default), so that adding a token needs no
/// setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokensSource {
    /// The file.
    pub path: PathBuf,
    /// Given with `--tokens-file`: it must exist. The default may not.
    pub named: bool,
}

impl TokensSource {
    /// `--tokens-file` if given, else `DIR/tokens.toml`.
    pub fn new(named: Option<PathBuf>, data_dir: &Path) -> TokensSource {
        match named {
            Some(path) => TokensSource { path, named: true },
            None => TokensSource {
                path: data_dir.join("tokens.toml"),
                named: false,
            },
        }
    }

    /// The scoped tokens now in the file (none if it is the default and does not exist).
    pub fn read(&self) -> Result<TokensFile, TokensFileError> {
        if self.named {
            TokensFile::read(&self.path)
        } else {
            TokensFile::read_or_empty(&self.path)
        }
    }
}

/// The API's TLS files (`--tls-cert`, `--tls-key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, server certificate first.
    pub cert: PathBuf,
    /// Its private key; in `cert` when absent.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads and checks both files: the acceptor that serves them.
    pub fn load(&self) -> Result<TlsAcceptor, cb_dispatcher::TlsFileError> {
        let config = cb_dispatcher::tls::server_config(&self.cert, self.key.as_deref())?;
        Ok(TlsAcceptor::from(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_keeps_what_it_read_across_a_set() {
        let current = Current::new(1);
        let before = current.get();
        current.set(2);
        assert_eq!((*before, *current.get()), (1, 2));
    }

    #[test]
    fn the_default_tokens_file_may_be_absent_a_named_one_may_not() {
        let dir = tempfile::tempdir().unwrap();
        let default = TokensSource::new(None, dir.path());
        assert_eq!(default.path, dir.path().join("tokens.toml"));
        assert_eq!(default.read().unwrap(), TokensFile::default());
        let named = TokensSource::new(Some(dir.path().join("t.toml")), dir.path());
        let e = named.read().unwrap_err().to_string();
        assert!(e.contains("t.toml") && e.contains("No such file"), "{e}");
    }
}
