//! Running out of file descriptors is a state, like a full disk: a roll
//! that cannot create its files fails with a retriable error, nothing is
//! poisoned, and appends continue once descriptors are free again.
//!
//! Alone in its test binary: it lowers the process's descriptor limit.

mod common;

use common::*;
use storage::{Log, StorageError};

/// Sets the soft limit on open descriptors; returns the previous one.
fn set_nofile(soft: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        let old = r.rlim_cur;
        r.rlim_cur = soft.min(r.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        old
    }
}

#[test]
fn a_roll_out_of_descriptors_is_retriable_and_the_log_goes_on_after() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..20u64 {
        log.append(&batch(i, 1, 300, 0), 1).unwrap();
    }
    log.sync_now().unwrap();
    // Take every descriptor left under a low limit.
    let old = set_nofile(64);
    let mut hogs = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hogs.push(f);
        assert!(hogs.len() < 10_000, "the limit did not apply");
    }
    let mut refused = None;
    for i in 20..2_000u64 {
        match log.append(&batch(i, 1, 300, 0), 1) {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("a roll needs new files");
    assert!(
        matches!(err, StorageError::OutOfResources { .. }) && err.is_retriable(),
        "{err}"
    );
    // Descriptors back: the same log goes on (not poisoned).
    drop(hogs);
    set_nofile(old);
    let before = read_all(&log).len();
    for i in 0..200u64 {
        log.append(&batch(10_000 + i, 1, 300, 0), 1).unwrap();
    }
    log.sync_now().unwrap();
    assert_eq!(read_all(&log).len(), before + 200);
    drop(log);
    let (log, report) = Log::open(dir.path(), small_config()).unwrap();
    assert!(report.truncations.is_empty(), "{:?}", report.truncations);
    assert_eq!(read_all(&log).len(), before + 200);
}
