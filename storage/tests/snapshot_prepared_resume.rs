//! Regression (found by review): a crash between
//! `SnapshotInstaller::prepare` and the exchange left a complete, fsync'ed
//! archive in staging that `resume` no longer recognised (prepare removed
//! `transfer.header`), so the follower fetched the whole archive again.

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
