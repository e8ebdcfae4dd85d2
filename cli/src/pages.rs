//! The memory pages the binaries ask the kernel for: small ones only.
//!
//! mimalloc asks for transparent huge pages on its arenas, and the first touch of each one
//! makes the kernel zero 2 MiB. On a virtual machine, where that first touch is also the
//! host's, it dominated the two figures that allocate a lot at once and briefly: a replay
//! (`clear_page_erms` under `do_huge_pmd_anonymous_page` was a seventh of the fold thread's
//! samples) and a restart (a third of cbd's samples until it served; restarted on a
//! 1,000,000-change log, cbd served after 0.73 s with huge pages and 0.24 s without, mean
//! of four runs each). Ingest and delivery measured the same either way.
#![allow(unsafe_code)]

/// Turns transparent huge pages off for this process (and the processes it starts). Call
/// it first thing in `main`; a failure only leaves huge pages on, which is correct, just
/// slower.
pub fn keep_small_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE sets one flag of this process; it reads and writes no
    // memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
