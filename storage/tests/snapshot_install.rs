//! Regressions found by review in the snapshot install path (storage
//! half). Each test names what it guards:
//! - an install whose staging directory another transfer took over (a newer
//!   ticket during the install) is refused instead of swapping in a mix;
//! - a prepared archive stays resumable after a crash before the exchange;
//! - an empty chunk is refused (a stream of them would never end).

mod common;

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;

use common::*;
use storage::{
    Cleanup, Clock, FaultInjector, Log, LogConfig, SnapshotInstaller, SnapshotReader,
    SNAPSHOT_CHUNK_BYTES_MAX,
};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 8 << 10,
        index_interval_bytes: 256,
        cleanup: Cleanup::Delete,
        clock: Clock::Manual(Rc::new(Cell::new(1_000_000))),
        faults: FaultInjector::new(),
        ..small_config()
    }
}

fn log_with(dir: &Path, seed: u64, n: u64) -> Log {
    let (mut log, _) = Log::open(dir, config()).unwrap();
    for i in 0..n {
        log.append(&batch(seed + i, 2, 300, 0), 1).unwrap();
    }
    log.roll().unwrap();
    log.sync_now().unwrap();
    log
}

#[test]
fn an_install_whose_staging_was_taken_over_by_a_newer_fetch_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = log_with(&tmp.path().join("a"), 1, 40);
    a.take_snapshot(&tmp.path().join("snap-a"), u64::MAX, b"a".to_vec())
        .unwrap();
    let want_a = read_all(&a);
    let b = log_with(&tmp.path().join("b"), 5000, 60);
    b.take_snapshot(&tmp.path().join("snap-b"), u64::MAX, b"b".to_vec())
        .unwrap();
    let ra = SnapshotReader::open(&tmp.path().join("snap-a")).unwrap();
    let rb = SnapshotReader::open(&tmp.path().join("snap-b")).unwrap();

    let dst_dir = tmp.path().join("dst");
    let mut dst = log_with(&dst_dir, 9000, 10);
    let old = read_all(&dst);

    // Fetch 1 staged archive A completely; the broker writes raft.state
    // into staging before the exchange.
    let mut inst1 = SnapshotInstaller::new(&dst_dir).unwrap();
    for c in ra.chunks(0, SNAPSHOT_CHUNK_BYTES_MAX) {
        let c = c.unwrap();
        inst1.write_chunk(c.offset, &c.data, c.crc).unwrap();
    }
    assert!(inst1.is_complete());
    std::fs::write(inst1.staging_dir().join("raft.state"), b"term+vote").unwrap();

    // Fetch 2 (a newer ticket) starts meanwhile on the same staging dir.
    let mut inst2 = SnapshotInstaller::new(&dst_dir).unwrap();
    for c in rb.chunks(0, 3001).take(3) {
        let c = c.unwrap();
        inst2.write_chunk(c.offset, &c.data, c.crc).unwrap();
    }

    let r = dst.install_snapshot(inst1);
    let installed = read_all(&dst);
    let state_kept = dst_dir.join("raft.state").exists();
    assert!(
        r.is_err(),
        "installed a staging dir that no longer holds archive A: \
         same as A: {}, same as old: {}, raft.state present: {state_kept}",
        installed == want_a,
        installed == old
    );
    assert!(installed == old, "the old partition must stay whole");
}

#[test]
fn a_prepared_archive_is_still_resumable_after_a_crash_before_the_exchange() {
    let tmp = tempfile::tempdir().unwrap();
    let a = log_with(&tmp.path().join("a"), 1, 40);
    a.take_snapshot(&tmp.path().join("snap-a"), u64::MAX, b"a".to_vec())
        .unwrap();
    let ra = SnapshotReader::open(&tmp.path().join("snap-a")).unwrap();
    let dst_dir = tmp.path().join("dst");
    let _dst = log_with(&dst_dir, 9000, 10);
    let mut inst = SnapshotInstaller::new(&dst_dir).unwrap();
    for c in ra.chunks(0, SNAPSHOT_CHUNK_BYTES_MAX) {
        let c = c.unwrap();
        inst.write_chunk(c.offset, &c.data, c.crc).unwrap();
    }
    assert!(inst.is_complete());
    inst.prepare().unwrap();
    drop(inst); // the process dies before install_prepared
    let resumed = SnapshotInstaller::resume(&dst_dir).unwrap();
    assert!(
        resumed.as_ref().is_some_and(|i| i.is_complete()),
        "a complete, durable archive in staging was forgotten (resume: {:?}); the follower re-fetches it all",
        resumed.map(|i| i.next_offset())
    );
}

#[test]
fn a_zero_length_chunk_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let part = tmp.path().join("p");
    std::fs::create_dir(&part).unwrap();
    let mut inst = SnapshotInstaller::new(&part).unwrap();
    for _ in 0..1000 {
        let r = inst.write_chunk(inst.next_offset(), &[], crc32c::crc32c(&[]));
        assert!(r.is_err(), "an empty chunk was taken without progress");
    }
}
