//! Standard Webhooks signing (<https://www.standardwebhooks.com/>): the secrets a callback
//! signs with, and the `webhook-signature` header for one request.
//!
//! A secret is `whsec_` and the base64 of 24 to 64 random bytes, the form the spec's
//! reference libraries generate and accept. A request is signed by HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}` with the decoded bytes; the header carries
//! `v1,<base64 signature>`, one per secret, separated by spaces. Several secrets are how a
//! secret is rotated without a gap: during the grace period the callback lists the new and
//! the old one, and a receiver holding either verifies the request.
//!
//! Signing is pure (the dispatcher passes the time of sending), so it lives in the core
//! beside the configuration that validates the secrets.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

/// The prefix of a Standard Webhooks secret.
pub const PREFIX: &str = "whsec_";
/// At most this many secrets sign at once (a rotation needs two).
pub const MAX_SECRETS: usize = 4;

/// One validated signing secret. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SigningSecret {
    /// As configured, `whsec_…` (kept to serialize the configuration back).
    text: String,
    /// The decoded key.
    key: Vec<u8>,
}

/// Why a secret was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// It does not start with `whsec_`.
    #[error("a secret starts with \"whsec_\" followed by base64 (as the Standard Webhooks libraries generate)")]
    Prefix,
    /// The part after the prefix is not base64.
    #[error("the part after \"whsec_\" is not standard base64")]
    Base64,
    /// The fingerprint the API shows in place of a secret, sent back as if it were one.
    #[error("this is the fingerprint the API shows in place of a secret (\"whsec_… (sha256 …)\"), not a secret: send the secret itself, or leave `secret` out to sign with none")]
    Fingerprint,
    /// The key is too short or too long.
    #[error("the key is {0} bytes; Standard Webhooks keys are 24 to 64 bytes")]
    Length(usize),
}

impl SigningSecret {
    /// Parses `whsec_<base64 of 24..=64 bytes>`.
    pub fn parse(text: &str) -> Result<SigningSecret, SecretError> {
        let encoded = text.strip_prefix(PREFIX).ok_or(SecretError::Prefix)?;
        // A client that GETs a callback and PUTs it back sends the redaction.
        if encoded.starts_with('…') {
            return Err(SecretError::Fingerprint);
        }
        let key = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
        if !(24..=64).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(SigningSecret {
            text: text.to_owned(),
            key,
        })
    }

    /// A stand-in for this secret in a redacted export: a valid secret, the same for the
    /// same secret (so a rotation list stays a list of distinct ones), from which the secret
    /// cannot be recovered (a SHA-256 of it). Signatures made with it verify nowhere.
    pub fn redacted(&self) -> SigningSecret {
        let mut h = Sha256::new();
        h.update(b"cb redacted secret\0");
        h.update(&self.key);
        let key = h.finalize().to_vec();
        SigningSecret {
            text: format!("{PREFIX}{}", STANDARD.encode(&key)),
            key,
        }
    }

    /// The secret as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `v1,<base64 HMAC-SHA256 of id.timestamp.body>`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(whsec_…)")
    }
}

/// The `webhook-signature` header value: one `v1,…` per secret, space-separated.
pub fn signature_header(
    secrets: &[SigningSecret],
    id: &str,
    timestamp: u64,
    body: &[u8],
) -> String {
    let signatures: Vec<String> = secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect();
    signatures.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector the Standard Webhooks specification and its reference libraries
    /// publish: reproducing it exactly means a receiver's library verifies what cb sends.
    #[test]
    fn the_published_test_vector() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn several_secrets_give_several_signatures_in_order() {
        let a = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = SigningSecret::parse(&format!("{PREFIX}{}", STANDARD.encode([7u8; 32]))).unwrap();
        let header = signature_header(&[b.clone(), a.clone()], "msg_1", 5, b"x");
        assert_eq!(
            header,
            format!("{} {}", b.sign("msg_1", 5, b"x"), a.sign("msg_1", 5, b"x"))
        );
        assert_ne!(
            a.sign("msg_1", 5, b"x"),
            a.sign("msg_1", 6, b"x"),
            "the timestamp is signed"
        );
        assert_ne!(
            a.sign("msg_1", 5, b"x"),
            a.sign("msg_2", 5, b"x"),
            "the id is signed"
        );
    }

    #[test]
    fn bad_secrets_are_refused_and_never_printed() {
        assert_eq!(
            SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::Prefix)
        );
        assert_eq!(
            SigningSecret::parse("whsec_not base64!"),
            Err(SecretError::Base64)
        );
        assert_eq!(
            SigningSecret::parse("whsec_c2hvcnQ="),
            Err(SecretError::Length(5))
        );
        let long = format!("{PREFIX}{}", STANDARD.encode([1u8; 65]));
        assert_eq!(SigningSecret::parse(&long), Err(SecretError::Length(65)));
        let s = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert!(!format!("{s:?}").contains("MfKQ"));
    }
}
