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
