//! Retention by bytes and by age (whole sealed segments) and rolling by age.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::*;
use storage::{Clock, Log, LogConfig};

#[test]
fn retention_by_bytes_deletes_oldest_sealed_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_bytes_max: Some(40 << 10),
        ..small_config()
    };
    let (mut log, _) = Log::open(dir.path(), cfg).unwrap();
    for i in 0..400u64 {
        log.append(&batch(i, 1, 300, 0), 1).unwrap();
    }
    let before = log.segment_bases();
    // Nothing Raft still needs goes: a low bound keeps everything.
    assert_eq!(log.apply_retention(before[1]).unwrap().segments, 1);
    let removed = log.apply_retention(log.next_offset()).unwrap();
    assert!(removed.segments > 0);
    assert!(log.data_bytes() >= 40 << 10, "keeps at least the limit");
    assert!(
        log.data_bytes() < (40 << 10) + (16 << 10),
        "deletes down to within a segment"
    );
    assert_eq!(log.log_start_offset(), log.segment_bases()[0]);
    assert_eq!(read_all(&log)[0].0, log.log_start_offset());
    assert_eq!(
        log.segment_bases().last(),
        before.last(),
        "the active segment stays"
    );
}

#[test]
fn retention_by_age_uses_the_newest_timestamp_of_each_segment() {
    let dir = tempfile::tempdir().unwrap();
    let now = Rc::new(Cell::new(100_000i64));
    let cfg = LogConfig {
        retention_age_ms_max: Some(10_000),
        clock: Clock::Manual(now.clone()),
        ..small_config()
    };
    let (mut log, _) = Log::open(dir.path(), cfg).unwrap();
    for i in 0..200u64 {
        log.append(&batch(i, 1, 300, 1_000 * i as i64), 1).unwrap();
    }
    // Batch i has timestamp 1000*i; at now=100s, batches older than 90s go.
    let removed = log.apply_retention(log.next_offset()).unwrap();
    assert!(removed.segments > 0);
    let start = log.log_start_offset();
    assert!(
        start <= 91,
        "nothing newer than the age limit is deleted: {start}"
    );
    let first = log.segment_bases()[0];
    assert_eq!(start, first);
    assert!(start > 40, "old segments went: {start}");
}

#[test]
fn active_segment_rolls_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let now = Rc::new(Cell::new(0i64));
    let cfg = LogConfig {
        segment_age_ms_max: 1_000,
        clock: Clock::Manual(now.clone()),
        ..small_config()
    };
    let (mut log, _) = Log::open(dir.path(), cfg).unwrap();
    log.append(&batch(0, 1, 10, 0), 1).unwrap();
    now.set(999);
    log.append(&batch(1, 1, 10, 0), 1).unwrap();
    assert_eq!(log.segment_bases().len(), 1);
    now.set(1_000);
    log.append(&batch(2, 1, 10, 0), 1).unwrap();
    assert_eq!(log.segment_bases(), vec![0, 2]);
}

#[test]
fn deferred_deletes_retire_segments_for_the_caller_and_open_clears_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_bytes_max: Some(40 << 10),
        defer_deletes: true,
        ..small_config()
    };
    let (mut log, _) = Log::open(dir.path(), cfg.clone()).unwrap();
    for i in 0..400u64 {
        log.append(&batch(i, 1, 300, 0), 1).unwrap();
    }
    let removed = log.apply_retention(log.next_offset()).unwrap();
    assert!(removed.segments > 0);
    let retired = log.take_retired();
    let paths = retired.paths().to_vec();
    assert_eq!(
        paths.len(),
        removed.segments * 3,
        "log, index and time index"
    );
    assert!(paths
        .iter()
        .all(|p| p.exists() && p.to_string_lossy().ends_with(".deleted")));
    assert!(log.take_retired().is_empty(), "handed out once");
    // The log no longer serves them and reads the rest as before.
    assert_eq!(read_all(&log)[0].0, log.log_start_offset());
    // A crash before the caller unlinked them: open removes the leftovers.
    let next = log.next_offset();
    drop(log);
    let (log, _) = Log::open(dir.path(), cfg).unwrap();
    assert!(paths.iter().all(|p| !p.exists()));
    assert_eq!(log.next_offset(), next);
    // Disposing after that is harmless (the files are already gone).
    assert!(retired.dispose().is_empty());
}

#[test]
fn disposing_retired_segments_unlinks_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_bytes_max: Some(40 << 10),
        defer_deletes: true,
        ..small_config()
    };
    let (mut log, _) = Log::open(dir.path(), cfg).unwrap();
    for i in 0..400u64 {
        log.append(&batch(i, 1, 300, 0), 1).unwrap();
    }
    log.apply_retention(log.next_offset()).unwrap();
    let retired = log.take_retired();
    let paths = retired.paths().to_vec();
    assert!(!paths.is_empty());
    // Released on another thread, as the broker does.
    let failed = std::thread::spawn(move || retired.dispose())
        .join()
        .unwrap();
    assert!(failed.is_empty());
    assert!(paths.iter().all(|p| !p.exists()));
    assert_eq!(read_all(&log)[0].0, log.log_start_offset());
}
