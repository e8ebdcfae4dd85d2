//! Rule 6 before the append: whether an operator's redeliver can happen, asked of the core by
//! the API and by `cbctl redeliver` on a data dir alike, with the answer an operator reads
//! when it cannot. The fold still decides: a redeliver that races past this check (a DELETE
//! or an attempt starting in between) is folded as ignored, and the history says why.

use cb_core::{CallbackRef, Core, FileKey, Ignored, Seq};
use hyper::StatusCode;

use crate::error::ApiError;

/// `Ok` if a redeliver of `file` (`callback`, or every enabled one) would start an attempt
/// if it were folded now; `version` is the file's latest change as the store knows it.
pub fn check(
    core: &Core,
    file: &FileKey,
    callback: Option<&CallbackRef>,
    version: Option<Seq>,
) -> Result<(), ApiError> {
    let Err(why) = core.redeliver_check(file, callback, version) else {
        return Ok(());
    };
    Err(match (why, callback) {
        (Ignored::NothingToRedeliver, _) => {
            ApiError::not_found(format!("file {file} has no change to deliver"))
        }
        (Ignored::UnknownCallback, Some(c)) => {
            // A per-file callback is `file:NAME`; say so when NAME is one of them.
            let per_file = match c {
                CallbackRef::Project(name) => {
                    let as_file = CallbackRef::File(name.clone());
                    core.callbacks_of(file).any(|(r, ..)| r == as_file)
                }
                CallbackRef::File(_) => false,
            };
            let hint = if per_file {
                format!(" (its per-file callback is file:{c})")
            } else {
                String::new()
            };
            ApiError::not_found(format!("file {file} has no callback {c}{hint}"))
        }
        (Ignored::UnknownCallback, None) => ApiError::not_found(format!(
            "file {file} has no enabled callback to redeliver to"
        )),
        (Ignored::DisabledCallback, Some(CallbackRef::File(name))) => ApiError::new(
            StatusCode::CONFLICT,
            "callback_disabled",
            format!(
                "the per-file callback {name} of {file} is disabled (its receiver answered 410 \
                 Gone); a change that carries the file's callbacks again enables it"
            ),
        ),
        (Ignored::DisabledCallback, _) => ApiError::new(
            StatusCode::CONFLICT,
            "callback_disabled",
            "the callback is disabled (its receiver answered 410 Gone); PUT it again to enable it",
        ),
        (Ignored::AlreadyInFlight, _) => ApiError::new(
            StatusCode::CONFLICT,
            "already_in_flight",
            format!(
                "an attempt for {file} is in flight, and a redeliver leaves it as it is (rule 6); \
                 its outcome decides what comes next: redeliver again once it is recorded"
            ),
        ),
        (Ignored::PausedCallback, _) => ApiError::new(
            StatusCode::CONFLICT,
            "callback_paused",
            format!(
                "the callback is paused (rule 8), so {file} cannot be redelivered to it; resume \
                 it (POST …/resume) and each waiting delivery goes out"
            ),
        ),
        // Not reasons a redeliver is ignored; named for completeness.
        (Ignored::StaleOutcome | Ignored::SupersededDisable | Ignored::NotPaused, _) => {
            ApiError::new(
                StatusCode::CONFLICT,
                "not_redeliverable",
                format!("{why:?}"),
            )
        }
    })
}
