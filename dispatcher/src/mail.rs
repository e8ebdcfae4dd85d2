//! `mailto:` deliveries through the SMTP relay given with `--smtp HOST:PORT`.
//!
//! The rendered payload is the mail body (with its content type); the subject names the
//! project, the file, the event of the change it carries and the version, as
//! `[cb] newzulu/556114 published (version 42)`. The sender is `--mail-from`. An SMTP rejection is `Outcome::Smtp { code }`, an unreachable
//! relay `Outcome::Connect`: both are failed attempts, retried like any other (rule 4).

use std::time::Duration;

use cb_core::{Attempt, EventKind, Outcome, Placement, Rendered};
use lettre::message::header::{self, ContentType};
use lettre::message::Mailbox;
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{AsyncTransport, Message, Tokio1Executor};

/// What a mail's subject says: the change its version is (the event, when it could be
/// read), or that it is an operator's test send (which also carries `cb-test: 1`).
#[derive(Clone, Copy, Debug)]
pub enum Subject {
    /// An attempt of a delivery.
    Change(Option<EventKind>),
    /// A test send.
    Test,
}

/// An SMTP relay connection pool.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    relay: String,
}

impl Mailer {
    /// The sender when `--mail-from` is not given.
    pub const DEFAULT_FROM: &'static str = "cb <cb@localhost>";

    /// Checks a `--mail-from` value before the daemon starts.
    pub fn check_sender(from: &str) -> Result<(), String> {
        from.parse::<Mailbox>()
            .map(drop)
            .map_err(|e| format!("--mail-from {from:?}: {e}"))
    }

    /// A mailer for `relay` (`host:port`, plain SMTP as a local relay speaks it), sending
    /// as `from` (an address, or `Name <address>`).
    pub fn new(relay: &str, from: &str) -> Result<Mailer, String> {
        let (host, port) = relay
            .rsplit_once(':')
            .ok_or_else(|| format!("--smtp {relay:?}: give HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("--smtp {relay:?}: {port:?} is not a port"))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(Duration::from_secs(30)))
            .build();
        let from = from
            .parse()
            .map_err(|e| format!("--mail-from {from:?}: {e}"))?;
        Ok(Mailer {
            transport,
            from,
            relay: relay.to_owned(),
        })
    }

    /// Sends one attempt's payload to `address`; `event` is the kind of the change the
    /// version is (absent if it could not be read).
    pub async fn send(
        &self,
        address: &str,
        attempt: &Attempt,
        subject: Subject,
        rendered: &Rendered,
        webhook_id: &str,
    ) -> (Outcome, String) {
        let to = match recipient(address) {
            Ok(m) => m,
            Err(e) => {
                return (
                    Outcome::Smtp { code: 553 },
                    format!("address {address}: {e}"),
                )
            }
        };
        let content_type = match rendered.placement {
            Placement::Body { content_type } => content_type,
            Placement::Query => "application/x-www-form-urlencoded",
        };
        let content_type = ContentType::parse(content_type).unwrap_or(ContentType::TEXT_PLAIN);
        let file = &attempt.machine.file;
        let mut message = Message::builder().from(self.from.clone()).to(to);
        message = match subject {
            Subject::Change(event) => message.subject(format!(
                "[cb] {}/{} {} (version {})",
                file.project,
                file.file_id,
                event.map_or("changed", EventKind::as_str),
                attempt.version
            )),
            Subject::Test => message
                .subject(format!(
                    "[cb] test send to {}/{}",
                    file.project, attempt.machine.callback
                ))
                .raw_header(header::HeaderValue::new(
                    header::HeaderName::new_from_ascii_str("cb-test"),
                    "1".into(),
                )),
        };
        let message = message
            .message_id(Some(format!("<{webhook_id}.{}@cb>", attempt.attempt)))
            // RFC 2045: without it, clients may show the quoted-printable body undecoded.
            .header(header::MIME_VERSION_1_0)
            .header(content_type)
            .body(String::from_utf8_lossy(&rendered.bytes).into_owned());
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                return (
                    Outcome::Smtp { code: 554 },
                    format!("building the message: {e}"),
                )
            }
        };
        match self.transport.send(message).await {
            Ok(response) => (
                Outcome::Delivered {
                    status: u16::from(response.code()),
                },
                String::new(),
            ),
            Err(e) => match e.status() {
                Some(code) => (
                    Outcome::Smtp {
                        code: u16::from(code),
                    },
                    format!("{} refused the message: {e}", self.relay),
                ),
                None if e.is_timeout() => (Outcome::Timeout, format!("{}: {e}", self.relay)),
                None => (Outcome::Connect, format!("{}: {e}", self.relay)),
            },
        }
    }
}

/// The recipient of a `mailto:` callback, as the SMTP client takes it: a plain address
/// (`name@example.org`, or an address literal such as `ops@[192.0.2.1]`). The API calls this
/// when a callback is set, so an address the client cannot send to is refused then, not
/// retried for two days.
pub fn recipient(address: &str) -> Result<Mailbox, lettre::address::AddressError> {
    address.parse::<lettre::Address>().map(Mailbox::from)
}
