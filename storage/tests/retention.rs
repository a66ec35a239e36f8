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

/// A log of Raft entries (1 KiB each) over several sealed 16 KiB segments.
fn entry_log(dir: &std::path::Path) -> Log {
    let (mut log, _) = Log::open(dir, small_config()).unwrap();
    for i in 0..100u64 {
        log.append_entry(&batch(i, 1, 1000, 0), 1, i + 1).unwrap();
    }
    log.sync_now().unwrap();
    assert!(log.segment_bases().len() > 3);
    log
}

fn entry_start_on_disk(dir: &std::path::Path) -> u64 {
    let b = std::fs::read(dir.join("entry-start")).unwrap();
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

#[test]
fn a_planned_start_move_syncs_nothing_on_the_calling_thread() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = entry_log(dir.path());
    let cut = log.segment_bases()[2];
    let floor = log.entry_for_offset(cut).unwrap();
    // Unplanned, the move fsyncs `entry-start` inline (twice).
    let plan = log.plan_move_start(cut).expect("entry-start must move");
    let path = dir.path().to_path_buf();
    let (plan, persisted) = std::thread::spawn(move || {
        let r = plan.persist();
        (plan, r)
    })
    .join()
    .unwrap();
    assert_eq!(entry_start_on_disk(&path), floor, "written by the plan");
    log.start_plan_persisted(plan, persisted).unwrap();
    log.move_start(cut).unwrap();
    assert_eq!(log.log_start_offset(), cut);
    assert_eq!(
        log.blocking_syncs(),
        0,
        "the move must not fsync on the caller's (the shard's) thread"
    );
    // The same move without a plan syncs inline: the counter sees it.
    let cut = log.segment_bases()[1];
    log.move_start(cut).unwrap();
    assert!(log.blocking_syncs() > 0);
    drop(log);
    let (log, _) = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.first_entry_index(), log.entry_for_offset(cut).unwrap());
}

#[test]
fn a_plan_that_raced_an_inline_write_leaves_file_and_memory_agreeing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = entry_log(dir.path());
    let cut = log.segment_bases()[2];
    let plan = log.plan_move_start(cut).unwrap();
    // Meanwhile (the plan runs off the shard) the log empties itself by
    // truncation, which writes `entry-start` inline...
    log.truncate_entries_from(1).unwrap();
    assert_eq!(entry_start_on_disk(dir.path()), 1);
    // ... and the plan's rename lands after it.
    let persisted = plan.persist();
    log.start_plan_persisted(plan, persisted).unwrap();
    assert_eq!(
        entry_start_on_disk(dir.path()),
        1,
        "the log's own value is written again"
    );
    assert_eq!(log.next_entry_index(), 1);
}
