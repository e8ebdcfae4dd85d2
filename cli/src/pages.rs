//! The memory pages the binaries ask the kernel for: small ones, unless told otherwise.
//!
//! mimalloc asks for transparent huge pages on its arenas, and the first touch of each one
//! makes the kernel zero 2 MiB. On a virtual machine, where that first touch is also the
//! host's, it dominated the two figures that allocate a lot at once and briefly: a replay
//! (`clear_page_erms` under `do_huge_pmd_anonymous_page` was a seventh of the fold thread's
//! samples) and a restart (a third of cbd's samples until it served; restarted on a
//! 1,000,000-change log, cbd served after 0.73 s with huge pages and 0.24 s without, mean
//! of four runs each). Ingest and delivery measured the same either way. An operator who
//! wants them (bare metal, a large steady heap) sets mimalloc's own `MIMALLOC_ALLOW_THP=1`.

use std::fmt;

/// What [`keep_small_pages`] did.
#[derive(Debug)]
pub enum Pages {
    /// Transparent huge pages are off for this process and the processes it starts.
    Small,
    /// `MIMALLOC_ALLOW_THP=1` asked to keep them; the kernel's setting applies.
    HugeAllowed,
    /// They could not be turned off (the kernel refused, or this is not Linux); the
    /// kernel's setting applies, which is correct, just slower on some machines.
    Unchanged(String),
}

impl fmt::Display for Pages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pages::Small => f.write_str("transparent huge pages off"),
            Pages::HugeAllowed => {
                f.write_str("transparent huge pages as the kernel sets them (MIMALLOC_ALLOW_THP=1)")
            }
            Pages::Unchanged(why) => write!(
                f,
                "transparent huge pages as the kernel sets them (turning them off failed: {why})"
            ),
        }
    }
}

/// Turns transparent huge pages off for this process (and the processes it starts), unless
/// `MIMALLOC_ALLOW_THP=1`. Call it first thing in `main`: the setting is checked at each
/// first touch of memory, so it covers what the allocator mapped before `main` too.
pub fn keep_small_pages() -> Pages {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some_and(|v| v == "1") {
        return Pages::HugeAllowed;
    }
    disable()
}

#[cfg(target_os = "linux")]
fn disable() -> Pages {
    match rustix::thread::disable_transparent_huge_pages(true) {
        Ok(()) => Pages::Small,
        Err(e) => Pages::Unchanged(std::io::Error::from(e).to_string()),
    }
}

#[cfg(not(target_os = "linux"))]
fn disable() -> Pages {
    Pages::Unchanged("only Linux has the switch".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_takes_and_says_so() {
        // Tests run in one process per crate; turning huge pages off for it is harmless.
        let pages = keep_small_pages();
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some_and(|v| v == "1") {
            assert!(matches!(pages, Pages::HugeAllowed));
        } else {
            #[cfg(target_os = "linux")]
            {
                assert!(matches!(pages, Pages::Small), "{pages}");
                assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
            }
        }
        assert!(pages.to_string().starts_with("transparent huge pages"));
    }
}
