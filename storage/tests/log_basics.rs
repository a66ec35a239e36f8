//! Append, read, truncate, move start, last batch, time lookups.

mod common;

use common::*;
use storage::{Log, StorageError};

#[test]
fn appends_are_read_back_byte_for_byte_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let mut want = Vec::new();
    for i in 0..60u64 {
        let b = batch(i, 1 + (i % 4) as usize, 200, 1000 + i as i64);
        let info = log.append(&b, 1 + i / 20).unwrap();
        assert_eq!(
            info.base_offset,
            want.iter().map(|(_, n, _)| *n).sum::<u64>()
        );
        let n = 1 + i % 4;
        assert_eq!(info.last_offset, info.base_offset + n - 1);
        assert_eq!(info.entry_index, i + 1);
        want.push((
            info.base_offset,
            n,
            stamped(b, info.base_offset, 1 + i / 20, i + 1),
        ));
    }
    assert!(log.segment_bases().len() >= 3, "small segments roll");
    let got = read_all(&log);
    assert_eq!(got.len(), want.len());
    for ((base, _, bytes), (gb, _, gbytes)) in want.iter().zip(&got) {
        assert_eq!(base, gb);
        assert_eq!(bytes, gbytes);
    }
    // Reads from the middle of a batch start at the batch that holds it.
    let (b7, n7, _) = want[7];
    let r = log.read(b7 + n7 - 1, 1, u64::MAX).unwrap();
    assert_eq!(common::batch::check(r.bytes).unwrap().base_offset, b7);
    // The upper bound hides batches not wholly below it.
    let r = log.read(b7, 1 << 20, b7 + n7 - 1).unwrap();
    assert!(r.bytes.is_empty());
    assert_eq!(r.next_offset, b7);
    let last = log.last_batch().unwrap();
    assert_eq!((last.base_offset, last.term), (want[59].0, 3));
    assert_eq!(log.term_at(want[25].0).unwrap(), 2);
    assert!(matches!(
        log.read(log.next_offset() + 1, 10, u64::MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn reopen_after_clean_sync_keeps_everything_and_trusts_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..80u64 {
        log.append(&batch(i, 2, 300, i as i64), 4).unwrap();
    }
    let durable = log.sync_now().unwrap();
    assert_eq!(durable, log.next_offset());
    let before = read_all(&log);
    let segments = log.segment_bases().len();
    drop(log);
    let (log, report) = Log::open(dir.path(), small_config()).unwrap();
    assert!(report.truncations.is_empty(), "{report:?}");
    assert_eq!(report.segments, segments);
    assert_eq!(
        report.segments_scanned, 1,
        "only the active segment is scanned"
    );
    assert_eq!(read_all(&log), before);
    assert_eq!(log.next_offset(), 160);
}

#[test]
fn truncated_suffix_never_comes_back_after_reappend_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let mut bases = Vec::new();
    for i in 0..50u64 {
        bases.push(log.append(&batch(i, 1, 400, 0), 1).unwrap().base_offset);
    }
    log.sync_now().unwrap();
    // Cut inside an older (sealed) segment.
    assert!(matches!(log.truncate_suffix(bases[10]), Ok(())));
    assert_eq!(log.next_offset(), bases[10]);
    assert!(log.durable_offset() <= bases[10]);
    // New, shorter batches in a newer term.
    for i in 0..5u64 {
        log.append(&batch(1000 + i, 1, 50, 0), 2).unwrap();
    }
    log.sync_now().unwrap();
    let before = read_all(&log);
    assert_eq!(before.len(), 15);
    drop(log);
    let (log, report) = Log::open(dir.path(), small_config()).unwrap();
    assert!(report.truncations.is_empty(), "{report:?}");
    assert_eq!(read_all(&log), before);
    assert_eq!(log.last_batch().unwrap().term, 2);
}

#[test]
fn truncate_rejects_offsets_inside_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    log.append(&batch(0, 3, 10, 0), 1).unwrap();
    log.append(&batch(1, 3, 10, 0), 1).unwrap();
    assert!(matches!(
        log.truncate_suffix(4),
        Err(StorageError::NotBatchBoundary { offset: 4 })
    ));
    assert_eq!(log.next_offset(), 6);
    log.truncate_suffix(3).unwrap();
    assert_eq!(log.next_offset(), 3);
}

#[test]
fn move_start_hides_and_deletes_old_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..60u64 {
        log.append(&batch(i, 1, 500, 0), 1).unwrap();
    }
    let segs = log.segment_bases();
    let removed = log.move_start(segs[2] + 1).unwrap();
    assert_eq!(removed.segments, 2);
    assert_eq!(log.log_start_offset(), segs[2] + 1);
    assert!(matches!(
        log.read(segs[2], 10, u64::MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert_eq!(read_all(&log)[0].0, segs[2] + 1);
    log.sync_now().unwrap();
    drop(log);
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.log_start_offset(), segs[2] + 1);
    // Past the end: the log empties and continues there (snapshot install).
    log.move_start(1000).unwrap();
    assert_eq!((log.log_start_offset(), log.next_offset()), (1000, 1000));
    assert_eq!(
        log.append(&batch(1, 1, 10, 0), 2).unwrap().base_offset,
        1000
    );
    assert!(log.last_batch().is_some());
}

#[test]
fn timestamp_lookup_finds_the_first_batch_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let mut bases = Vec::new();
    for i in 0..100u64 {
        bases.push(
            log.append(&batch(i, 1, 100, 10 * i as i64), 1)
                .unwrap()
                .base_offset,
        );
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(bases[0]));
    assert_eq!(log.offset_for_timestamp(455).unwrap(), Some(bases[46]));
    assert_eq!(log.offset_for_timestamp(990).unwrap(), Some(bases[99]));
    assert_eq!(log.offset_for_timestamp(991).unwrap(), None);
}

#[test]
fn replicated_appends_must_continue_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let b = stamped(batch(0, 2, 10, 0), 0, 3, 1);
    assert_eq!(log.append_replicated(&b).unwrap().last_offset, 1);
    let gap = stamped(batch(1, 1, 10, 0), 5, 3, 2);
    assert!(matches!(
        log.append_replicated(&gap),
        Err(StorageError::NotContiguous { .. })
    ));
    let entry_gap = stamped(batch(1, 1, 10, 0), 2, 3, 3);
    assert!(matches!(
        log.append_replicated(&entry_gap),
        Err(StorageError::NotContiguous { .. })
    ));
    let old_term = stamped(batch(1, 1, 10, 0), 2, 2, 2);
    assert!(matches!(
        log.append_replicated(&old_term),
        Err(StorageError::NotContiguous { .. })
    ));
    let mut bad = stamped(batch(1, 1, 10, 0), 2, 3, 2);
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    assert!(matches!(
        log.append_replicated(&bad),
        Err(StorageError::InvalidBatch(_))
    ));
    assert_eq!(log.next_offset(), 2);
}

/// A batch of one record whose stored size is exactly `bytes`.
fn batch_of_exactly(tag: u64, bytes: usize) -> Vec<u8> {
    (0..bytes)
        .rev()
        .map(|v| batch(tag, 1, v, 7))
        .find(|b| b.len() == bytes)
        .unwrap_or_else(|| panic!("no one-record batch of exactly {bytes} bytes"))
}

/// Regression (model seed 1795694414262779314, step 45): a segment filled to
/// exactly `segment_bytes_max` and then sealed has no room to preallocate
/// when a truncation reopens it; `fallocate` with a zero length failed with
/// EINVAL, the log was poisoned — after the later segments were already
/// deleted — and a reopen found the log cut at the sealed segment's end.
#[test]
fn truncate_into_a_segment_sealed_exactly_full() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || storage::LogConfig {
        segment_bytes_max: storage::SEGMENT_BYTES_MIN,
        ..small_config()
    };
    let cap = storage::SEGMENT_BYTES_MIN as usize;
    let (mut log, _) = Log::open(dir.path(), cfg()).unwrap();
    let first = batch(1, 2, 300, 5);
    let fill = batch_of_exactly(2, cap - first.len());
    let after = batch(3, 3, 100, 9);
    assert_eq!(log.append(&first, 1).unwrap().base_offset, 0);
    assert_eq!(log.append(&fill, 1).unwrap().base_offset, 2);
    assert_eq!(
        log.segment_bases(),
        vec![0],
        "the first segment is exactly full"
    );
    assert_eq!(log.append(&after, 1).unwrap().base_offset, 3);
    assert_eq!(log.segment_bases(), vec![0, 3], "the full segment rolled");
    assert_eq!(log.sync_now().unwrap(), 6);

    log.truncate_suffix(2).unwrap();
    assert!(log.poisoned().is_none());
    assert_eq!(log.next_offset(), 2);
    assert_eq!(log.segment_bases(), vec![0]);
    let want = vec![(0, 1, stamped(first.clone(), 0, 1, 1))];
    assert_eq!(read_all(&log), want);
    // The reopened segment takes appends again.
    let again = batch(4, 1, 50, 11);
    assert_eq!(log.append(&again, 2).unwrap().base_offset, 2);
    assert_eq!(log.sync_now().unwrap(), 3);
    drop(log);

    let (log, report) = Log::open(dir.path(), cfg()).unwrap();
    assert!(report.truncations.is_empty(), "{report:?}");
    assert_eq!(log.next_offset(), 3);
    let mut want = want;
    want.push((2, 2, stamped(again, 2, 2, 2)));
    assert_eq!(read_all(&log), want);
}

#[test]
fn sealed_durable_segments_hold_no_file_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..400u64 {
        log.append(&batch(i, 1, 300, 0), 1).unwrap();
    }
    let segments = log.segment_bases().len();
    assert!(segments > 5);
    log.sync_now().unwrap();
    // Only the active segment keeps its log and index files open: a log of
    // thousands of segments must not run the process out of descriptors.
    assert_eq!(log.open_files(), 3, "{segments} segments");
    let before = read_all(&log);
    // Reads go through the maps; a truncation into a sealed segment opens
    // its files again and writes continue from there.
    let cut = log.segment_bases()[2] + 1;
    let cut = before
        .iter()
        .map(|(o, _, _)| *o)
        .find(|&o| o >= cut)
        .unwrap();
    log.truncate_suffix(cut).unwrap();
    log.append(&batch(9999, 1, 300, 0), 1).unwrap();
    log.sync_now().unwrap();
    assert!(log.open_files() <= 3);
    drop(log);
    let (log, _) = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.open_files(), 3, "reopened sealed segments hold none");
    let after = read_all(&log);
    assert_eq!(
        after.len(),
        before.iter().filter(|(o, _, _)| *o < cut).count() + 1
    );
    assert_eq!(&after[..after.len() - 1], &before[..after.len() - 1]);
}
