//! Raft entry indexes: every batch is one entry, its index stamped in the
//! header; lookups by index, truncation by index, the next index across
//! reopens (also of an empty log), recovery cutting where the sequence
//! breaks, compaction and retention.

mod common;

use std::cell::Cell;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;

use common::batch::{self, NewRecord};
use common::*;
use storage::{Cleanup, Clock, Log, LogConfig, StorageError};

/// Appends `n` batches of 1..=3 records (terms rising every 10), returns
/// (entry index, base offset, record count, term) of each.
fn fill(log: &mut Log, n: u64) -> Vec<(u64, u64, u64, u64)> {
    let mut v = Vec::new();
    for i in 0..n {
        let count = 1 + i % 3;
        let term = 1 + i / 10;
        let entry = log.next_entry_index();
        let info = log
            .append_entry(&batch(i, count as usize, 200, i as i64), term, entry)
            .unwrap();
        assert_eq!(info.entry_index, entry);
        assert_eq!(info.last_offset, info.base_offset + count - 1);
        v.push((entry, info.base_offset, count, term));
    }
    v
}

fn header(bytes: &[u8]) -> batch::BatchHeader {
    batch::check(bytes).unwrap()
}

#[test]
fn entries_are_found_by_index_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        (
            log.first_entry_index(),
            log.next_entry_index(),
            log.last_entry_index()
        ),
        (1, 1, 0)
    );
    let want = fill(&mut log, 300);
    assert!(log.segment_bases().len() > 4, "small segments roll");
    assert_eq!(log.first_entry_index(), 1);
    assert_eq!(log.next_entry_index(), 301);
    assert_eq!(log.last_entry_index(), 300);
    assert_eq!(log.last_batch().unwrap().entry_index, 300);
    for &(entry, base, count, term) in &want {
        assert_eq!(log.entry_term(entry).unwrap(), term);
        assert_eq!(log.entry_base_offset(entry).unwrap(), base);
        assert_eq!(log.entry_end_offset(entry).unwrap(), base + count);
        let bytes = log.read_entry(entry).unwrap();
        let h = header(bytes);
        assert_eq!((h.entry_index, h.base_offset, h.term), (entry, base, term));
        assert_eq!(bytes, log.read(base, 1, u64::MAX).unwrap().bytes);
        for o in base..base + count {
            assert_eq!(log.entry_for_offset(o), Some(entry));
        }
    }
    assert_eq!(log.entry_for_offset(log.next_offset()), None);
    for bad in [0, 301, 1000] {
        assert!(
            matches!(
                log.entry_term(bad),
                Err(StorageError::EntryOutOfRange {
                    first: 1,
                    next: 301,
                    ..
                })
            ),
            "{bad}"
        );
    }
    // Range reads: in order, across segments, bounded by bytes (but at
    // least one entry), never past `hi`.
    let all = log.read_entries(1, 301, usize::MAX).unwrap();
    assert_eq!(all.len(), 300);
    for (i, b) in all.iter().enumerate() {
        assert_eq!(header(b).entry_index, i as u64 + 1);
    }
    let one = log.read_entries(17, 200, 1).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(header(one[0]).entry_index, 17);
    let some = log.read_entries(40, 60, 2000).unwrap();
    assert!(!some.is_empty() && some.len() < 20);
    assert!(some.iter().map(|b| b.len()).sum::<usize>() <= 2000);
    assert_eq!(log.read_entries(40, 45, usize::MAX).unwrap().len(), 5);
    assert!(log.read_entries(5, 5, 100).unwrap().is_empty());
    assert!(matches!(
        log.read_entries(5, 302, 100),
        Err(StorageError::EntryOutOfRange { .. })
    ));

    // Everything is still there after a reopen (sealed segments trusted
    // from their index footers, the active one scanned).
    log.sync_now().unwrap();
    drop(log);
    let (log, report) = Log::open(dir.path(), small_config()).unwrap();
    assert!(report.truncations.is_empty(), "{report:?}");
    assert_eq!((log.first_entry_index(), log.next_entry_index()), (1, 301));
    for &(entry, base, _, term) in want.iter().step_by(7) {
        assert_eq!(log.entry_term(entry).unwrap(), term);
        assert_eq!(log.entry_base_offset(entry).unwrap(), base);
    }
}

#[test]
fn appends_must_continue_the_entry_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let b = batch(0, 2, 10, 0);
    for wrong in [0, 2, 7] {
        assert!(matches!(
            log.append_entry(&b, 1, wrong),
            Err(StorageError::NotContiguous { .. })
        ));
    }
    assert_eq!((log.next_offset(), log.next_entry_index()), (0, 1));
    assert_eq!(log.append_entry(&b, 1, 1).unwrap().entry_index, 1);
    // `append` takes the next entry index itself.
    assert_eq!(log.append(&b, 1).unwrap().entry_index, 2);
    // A replicated batch keeps its stamps; its entry index must follow.
    let good = stamped(batch(1, 1, 10, 0), 4, 1, 3);
    let bad = stamped(batch(1, 1, 10, 0), 4, 1, 5);
    assert!(matches!(
        log.append_replicated(&bad),
        Err(StorageError::NotContiguous { .. })
    ));
    let info = log.append_replicated(&good).unwrap();
    assert_eq!((info.base_offset, info.entry_index), (4, 3));
    assert_eq!(log.read_entry(3).unwrap(), &good[..]);
}

#[test]
fn truncation_by_entry_index_and_the_next_index_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let want = fill(&mut log, 200);
    let (entry, base, _, _) = want[119];
    log.truncate_entries_from(entry).unwrap();
    assert_eq!(log.next_entry_index(), entry);
    assert_eq!(log.next_offset(), base);
    assert!(matches!(
        log.read_entry(entry),
        Err(StorageError::EntryOutOfRange { .. })
    ));
    // No-op past the end.
    log.truncate_entries_from(10_000).unwrap();
    assert_eq!(log.next_entry_index(), entry);
    // Appends continue at `entry`, in a new term.
    let info = log.append(&batch(999, 1, 10, 0), 50).unwrap();
    assert_eq!((info.entry_index, info.base_offset), (entry, base));
    log.sync_now().unwrap();
    drop(log);
    let (mut log, report) = Log::open(dir.path(), small_config()).unwrap();
    assert!(report.truncations.is_empty(), "{report:?}");
    assert_eq!(log.next_entry_index(), entry + 1);
    assert_eq!(log.entry_term(entry).unwrap(), 50);
    assert_eq!(log.entry_term(entry - 1).unwrap(), want[118].3);

    // Truncating every entry leaves an empty log that continues at the
    // first removed index, also after a reopen.
    log.truncate_entries_from(1).unwrap();
    assert_eq!((log.next_offset(), log.next_entry_index()), (0, 1));
    log.append(&batch(1, 1, 10, 0), 60).unwrap();
    log.append(&batch(2, 1, 10, 0), 60).unwrap();
    log.truncate_entries_from(2).unwrap();
    assert_eq!(log.next_entry_index(), 2);
    log.truncate_entries_from(1).unwrap();
    assert_eq!(log.next_entry_index(), 1);
    log.sync_now().unwrap();
    drop(log);
    let (log, _) = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.next_entry_index(), 1);
}

#[test]
fn an_empty_log_keeps_its_next_entry_index_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    // As after a snapshot install: the log continues at entry 500.
    log.move_start(1000).unwrap();
    log.set_next_entry_index(500).unwrap();
    assert_eq!(
        (log.first_entry_index(), log.next_entry_index()),
        (500, 500)
    );
    assert_eq!(log.last_entry_index(), 499);
    drop(log);
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.next_entry_index(), 500);
    assert!(matches!(
        log.set_next_entry_index(0),
        Err(StorageError::NotContiguous { .. })
    ));
    let info = log.append(&batch(1, 2, 10, 0), 3).unwrap();
    assert_eq!((info.base_offset, info.entry_index), (1000, 500));
    // Not allowed once the log holds a batch.
    assert!(matches!(
        log.set_next_entry_index(9),
        Err(StorageError::NotContiguous { .. })
    ));
    log.append(&batch(2, 2, 10, 0), 3).unwrap();
    assert_eq!(log.next_entry_index(), 502);

    // Emptied by moving the start past the end: the index carries on.
    log.move_start(5000).unwrap();
    assert_eq!(log.next_offset(), 5000);
    assert_eq!(
        (log.first_entry_index(), log.next_entry_index()),
        (502, 502)
    );
    drop(log);
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.next_entry_index(), 502);
    assert_eq!(log.append(&batch(3, 1, 10, 0), 3).unwrap().entry_index, 502);
}

#[test]
fn retention_moves_the_first_entry_index() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let want = fill(&mut log, 300);
    let bases = log.segment_bases();
    let cut = bases[2];
    log.move_start(cut).unwrap();
    let first = want.iter().find(|w| w.1 == cut).unwrap().0;
    assert_eq!(log.first_entry_index(), first);
    assert!(matches!(
        log.entry_term(first - 1),
        Err(StorageError::EntryOutOfRange { .. })
    ));
    assert_eq!(log.entry_term(first).unwrap(), want[first as usize - 1].3);
    assert_eq!(
        log.read_entries(first, first + 3, usize::MAX)
            .unwrap()
            .len(),
        3
    );
    // A start inside a batch: that batch is the first entry still served.
    let (e, b, c, _) = want[first as usize + 10];
    assert!(c > 1 || want[first as usize + 11].2 > 1);
    let inside = if c > 1 {
        b + 1
    } else {
        want[first as usize + 11].1 + 1
    };
    let holder = if c > 1 { e } else { e + 1 };
    log.move_start(inside).unwrap();
    assert_eq!(log.first_entry_index(), holder);
    assert_eq!(log.next_entry_index(), 301);
    log.sync_now().unwrap();
    drop(log);
    let (log, _) = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        (log.first_entry_index(), log.next_entry_index()),
        (holder, 301)
    );
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// Positions of the batches in a segment file.
fn positions(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut v = Vec::new();
    let mut pos = 0usize;
    while pos + batch::HEADER_BYTES <= bytes.len() {
        let Ok(h) = batch::header(&bytes[pos..]) else {
            break;
        };
        v.push(pos as u64);
        pos += h.batch_bytes as usize;
    }
    v
}

#[test]
fn recovery_cuts_the_log_where_the_entry_sequence_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let want = fill(&mut log, 200);
    log.sync_now().unwrap();
    let bases = log.segment_bases();
    drop(log);
    // The active segment: a batch in its middle claims an entry index that skips.
    let active = segment_files(dir.path(), "log").pop().unwrap();
    let ps = positions(&active);
    assert!(ps.len() >= 2, "{ps:?}");
    let k = ps.len() / 2;
    let at = ps[k];
    let first_entry = want
        .iter()
        .find(|w| w.1 == *bases.last().unwrap())
        .unwrap()
        .0;
    patch(&active, at + 16, &(first_entry + 10).to_le_bytes());
    let (log, report) = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(report.truncations.len(), 1, "{report:?}");
    assert!(
        report.truncations[0].reason.contains("entry index"),
        "{report:?}"
    );
    assert_eq!(report.truncations[0].position, at);
    let k = k as u64;
    assert_eq!(log.next_entry_index(), first_entry + k);
    assert_eq!(log.next_offset(), want[(first_entry + k) as usize - 1].1);
    drop(log);

    // A trusted sealed segment whose first entry does not follow the
    // previous segment's last: scanned, and the log is cut there.
    let files = segment_files(dir.path(), "log");
    let third = &files[2];
    let e = want.iter().find(|w| w.1 == bases[2]).unwrap().0;
    patch(third, 16, &(e - 1).to_le_bytes());
    let (log, report) = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(report.truncations.len(), 1, "{report:?}");
    assert_eq!(report.truncations[0].position, 0);
    assert_eq!(log.next_entry_index(), e);
    assert_eq!(log.next_offset(), bases[2]);
    assert_eq!(log.entry_term(e - 1).unwrap(), want[e as usize - 2].3);
}

#[test]
fn compaction_keeps_entry_stamps_and_missing_entries_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Rc::new(Cell::new(0i64));
    let config = LogConfig {
        segment_bytes_max: 4 << 10,
        index_interval_bytes: 256,
        cleanup: Cleanup::Compact {
            tombstone_grace_ms: 0,
        },
        clock: Clock::Manual(clock.clone()),
        ..small_config()
    };
    let (mut log, _) = Log::open(dir.path(), config.clone()).unwrap();
    // Every batch rewrites the same 4 keys, so compaction drops whole
    // batches below the bound.
    let rec = |k: u64, i: u64| NewRecord {
        key: Some(format!("key{k}").into_bytes()),
        value: Some(vec![i as u8; 100]),
    };
    for i in 0..200u64 {
        let b = batch::build(&[rec(i % 4, i), rec((i + 1) % 4, i)], i as i64);
        assert_eq!(log.append(&b, 1).unwrap().entry_index, i + 1);
    }
    log.roll().unwrap();
    log.sync_now().unwrap();
    let report = log.compact(log.next_offset()).unwrap();
    assert!(report.batches_removed > 0, "{report:?}");
    let mut found = 0;
    let mut missing = 0;
    for i in 1..=200u64 {
        match log.read_entry(i) {
            Ok(bytes) => {
                assert_eq!(header(bytes).entry_index, i);
                assert_eq!(log.entry_base_offset(i).unwrap(), 2 * (i - 1));
                found += 1;
            }
            Err(StorageError::EntryNotFound { index, .. }) => {
                assert_eq!(index, i);
                missing += 1;
            }
            // Compaction dropped the first batches: the log's entries now
            // start later.
            Err(StorageError::EntryOutOfRange { index, first, .. }) if index < first => {
                missing += 1;
            }
            Err(e) => panic!("entry {i}: {e}"),
        }
    }
    assert!(found > 0 && missing > 0, "{found} found, {missing} missing");
    assert_eq!(log.next_entry_index(), 201);
    // The gaps survive a reopen without being mistaken for damage, also
    // when the compacted segments' indexes are lost and they are scanned.
    drop(log);
    for ix in segment_files(dir.path(), "index") {
        std::fs::remove_file(ix).unwrap();
    }
    let (mut log, report) = Log::open(dir.path(), config).unwrap();
    assert!(report.truncations.is_empty(), "{report:?}");
    assert!(report.indexes_rebuilt > 0, "{report:?}");
    assert_eq!(log.next_entry_index(), 201);
    assert_eq!(log.append(&batch(1, 1, 10, 0), 1).unwrap().entry_index, 201);
    assert_eq!(
        log.read_entry(200).map(|b| header(b).entry_index).ok(),
        Some(200)
    );
}

#[test]
fn partition_append_entry_waits_for_durability() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
    ex.run(async move {
        let (log, _) = Log::open(&path, small_config()).unwrap();
        let p = storage::shard::Partition::new(log);
        let info = p.append_entry(&batch(1, 2, 10, 0), 1, 1).await.unwrap();
        assert_eq!((info.entry_index, info.last_offset), (1, 1));
        assert!(p.log().durable_offset() >= 2);
        assert!(matches!(
            p.append_entry(&batch(2, 1, 10, 0), 1, 5).await,
            Err(StorageError::NotContiguous { .. })
        ));
        assert_eq!(p.log().next_entry_index(), 2);
    });
}
