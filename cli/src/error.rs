//! The API's error answer: a status and `{"error": code, "detail": text}` (plus `"line"` for
//! a batch), so a client can branch on `error` and a person can read `detail`.

use hyper::StatusCode;

/// A refused or failed request.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code (`bad_json`, `unknown_event`, …).
    pub code: &'static str,
    /// What is wrong, for people.
    pub detail: String,
    /// The line of a batch the error is on, from 1.
    pub line: Option<usize>,
    /// Close the connection after answering (the request body was not read to its end).
    pub close: bool,
    /// The methods the path takes, for the `Allow` header of a 405.
    pub allow: Option<&'static str>,
    /// Seconds after which to try again, for a `Retry-After` header.
    pub retry_after: Option<u32>,
}

/// What a 503 or 507 from the log asks a client to wait before trying again.
const RETRY_AFTER_SECS: u32 = 5;

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            line: None,
            close: false,
            allow: None,
            retry_after: None,
        }
    }

    /// The same error, asking the client to try again after `secs`.
    pub fn retry_after(mut self, secs: u32) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    /// The same error, naming the methods the path takes (a 405's `Allow`).
    pub fn allowing(mut self, methods: &'static str) -> ApiError {
        self.allow = Some(methods);
        self
    }

    /// The same error, closing the connection after the answer.
    pub fn closing(mut self) -> ApiError {
        self.close = true;
        self
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 507/503/500 from the log: it could not take or give the records. A full disk is
    /// 507 `disk_full` (nothing was appended; retry once space is freed), other I/O and an
    /// index being rebuilt are 503 with `Retry-After`, damage to the log is 500.
    pub fn store(e: &cb_store::Error) -> ApiError {
        match e {
            cb_store::Error::Rejected(reason) => ApiError::bad_request("rejected", reason.clone()),
            cb_store::Error::DiskFull { .. } => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "disk_full", e.to_string())
                    .retry_after(RETRY_AFTER_SECS)
            }
            cb_store::Error::IndexUnavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "index_rebuilding",
                e.to_string(),
            )
            .retry_after(RETRY_AFTER_SECS),
            cb_store::Error::Poisoned(_) | cb_store::Error::Closed | cb_store::Error::Io { .. } => {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "log_unavailable",
                    e.to_string(),
                )
                .retry_after(RETRY_AFTER_SECS)
            }
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "log_error",
                e.to_string(),
            ),
        }
    }

    /// The same error, on line `line` of a batch.
    pub fn at_line(mut self, line: usize) -> ApiError {
        self.line = Some(line);
        self.detail = format!("line {line}: {}", self.detail);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "error": self.code, "detail": self.detail });
        if let Some(line) = self.line {
            v["line"] = line.into();
        }
        v
    }
}

/// An error and its causes on one line, skipping a cause whose text the line already carries
/// (library errors often print their source themselves). For the binaries' last word.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut current = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        current = err.source();
    }
    line
}
