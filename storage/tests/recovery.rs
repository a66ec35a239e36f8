//! Recovery: every batch before the damage survives, nothing after it is
//! served, and the damage is reported. Damage is done to the files of a
//! closed log: flipped bytes, a file cut mid-batch, zeroed pages, deleted or
//! garbled index files.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use storage::{Log, StorageError};

const VALUE_BYTES: usize = 300;

/// Writes `n` one-record batches (all the same size), syncs, closes; returns
/// the stamped batches and their size.
fn fill(dir: &Path, n: u64) -> (Vec<Vec<u8>>, usize) {
    let (mut log, _) = Log::open(dir, small_config()).unwrap();
    let mut v = Vec::new();
    for i in 0..n {
        let b = batch(i, 1, VALUE_BYTES, i as i64);
        let info = log.append(&b, 1).unwrap();
        assert_eq!(info.base_offset, i);
        v.push(stamped(b, i, 1, i + 1));
    }
    log.sync_now().unwrap();
    let len = v[0].len();
    (v, len)
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn read_byte(path: &Path, at: u64) -> u8 {
    let f = OpenOptions::new().read(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0]
}

/// Reopens and checks that exactly the first `survivors` batches are served.
fn assert_survivors(dir: &Path, want: &[Vec<u8>], survivors: usize) -> storage::RecoveryReport {
    let (mut log, report) = Log::open(dir, small_config()).unwrap();
    let got: Vec<Vec<u8>> = read_all(&log).into_iter().map(|(_, _, b)| b).collect();
    assert_eq!(got.len(), survivors, "report: {report:?}");
    assert_eq!(&got[..], &want[..survivors]);
    assert_eq!(log.next_offset(), survivors as u64);
    // The log keeps working after recovery, and the cut sticks after a reopen.
    let info = log.append(&batch(9999, 1, 10, 0), 1).unwrap();
    assert_eq!(info.base_offset, survivors as u64);
    log.sync_now().unwrap();
    drop(log);
    let (log, again) = Log::open(dir, small_config()).unwrap();
    assert!(
        again.truncations.is_empty(),
        "second open is clean: {again:?}"
    );
    assert_eq!(log.next_offset(), survivors as u64 + 1);
    report
}

/// (first batch index, file) of each segment.
fn segment_starts(dir: &Path) -> Vec<(usize, std::path::PathBuf)> {
    segment_files(dir, "log")
        .into_iter()
        .map(|p| {
            let base: usize = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            (base, p)
        })
        .collect()
}

#[test]
fn flipped_byte_in_the_active_segment_cuts_the_log_before_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (want, len) = fill(dir.path(), 100);
    let starts = segment_starts(dir.path());
    let (first, path) = starts.last().unwrap().clone();
    let k = 3; // fourth batch of the active segment
    patch(
        &path,
        (k * len + 100) as u64,
        &[read_byte(&path, (k * len + 100) as u64) ^ 0x40],
    );
    let report = assert_survivors(dir.path(), &want, first + k);
    assert_eq!(report.truncations.len(), 1);
    assert_eq!(report.truncations[0].position, (k * len) as u64);
    assert!(
        report.truncations[0].reason.contains("crc"),
        "{:?}",
        report.truncations
    );
}

#[test]
fn file_cut_mid_batch_keeps_the_batches_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (want, len) = fill(dir.path(), 100);
    let (first, path) = segment_starts(dir.path()).last().unwrap().clone();
    let k = 5;
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len((k * len + len / 2) as u64).unwrap();
    drop(f);
    assert_survivors(dir.path(), &want, first + k);
}

#[test]
fn zeroed_page_cuts_the_log_at_the_first_batch_it_touches() {
    let dir = tempfile::tempdir().unwrap();
    let (want, len) = fill(dir.path(), 100);
    let (first, path) = segment_starts(dir.path()).last().unwrap().clone();
    assert!(
        (want.len() - first) * len > 4096 + len,
        "the active segment spans the page"
    );
    patch(&path, 4096, &[0u8; 4096]);
    let report = assert_survivors(dir.path(), &want, first + 4096 / len);
    assert_eq!(
        report.truncations.len(),
        1,
        "nonzero bytes after the hole are reported"
    );
}

#[test]
fn torn_header_at_the_tail_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (want, len) = fill(dir.path(), 100);
    let (first, path) = segment_starts(dir.path()).last().unwrap().clone();
    let n = want.len() - first;
    // The last batch's length field is garbage (a torn header).
    patch(
        &path,
        ((n - 1) * len + 24) as u64,
        &[0xff, 0xff, 0x00, 0x10],
    );
    assert_survivors(dir.path(), &want, want.len() - 1);
}

#[test]
fn deleted_index_files_are_rebuilt_from_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (want, _) = fill(dir.path(), 200);
    let index_files = segment_files(dir.path(), "index");
    assert!(index_files.len() >= 4);
    std::fs::remove_file(&index_files[0]).unwrap();
    std::fs::remove_file(&segment_files(dir.path(), "timeindex")[1]).unwrap();
    // Garble one entry of a third index: its footer CRC no longer matches.
    patch(&index_files[2], 0, &[0xaa; 8]);
    let report = assert_survivors(dir.path(), &want, want.len());
    assert!(report.truncations.is_empty(), "{report:?}");
    assert_eq!(report.indexes_rebuilt, 3);
    // And lookups through the rebuilt indexes work.
    let (log, _) = Log::open(dir.path(), small_config()).unwrap();
    for i in [0u64, 7, 31, 64, 99] {
        let r = log.read(i, 1, u64::MAX).unwrap();
        assert_eq!(r.bytes, &want[i as usize][..]);
    }
    assert_eq!(log.offset_for_timestamp(42).unwrap(), Some(42));
}

#[test]
fn damage_in_a_sealed_segment_without_index_drops_everything_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (want, len) = fill(dir.path(), 100);
    let starts = segment_starts(dir.path());
    let (first, path) = starts[1].clone();
    std::fs::remove_file(path.with_extension("index")).unwrap();
    let at = (2 * len + 70) as u64;
    patch(&path, at, &[read_byte(&path, at) ^ 1]);
    let report = assert_survivors(dir.path(), &want, first + 2);
    assert_eq!(report.truncations[0].segments_dropped, starts.len() - 2);
}

#[test]
fn damage_in_a_trusted_sealed_segment_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let (want, len) = fill(dir.path(), 100);
    let (first, path) = segment_starts(dir.path())[1].clone();
    let at = (4 * len + 70) as u64;
    patch(&path, at, &[read_byte(&path, at) ^ 1]);
    let (log, report) = Log::open(dir.path(), small_config()).unwrap();
    assert!(
        report.truncations.is_empty(),
        "sealed segments are checked lazily"
    );
    // Batches before the damage are served; the damaged one is refused.
    let r = log.read(first as u64, 1 << 20, u64::MAX).unwrap();
    assert_eq!(r.bytes, want[first..first + 4].concat());
    assert!(matches!(
        log.read(first as u64 + 4, 1 << 20, u64::MAX),
        Err(StorageError::Corrupt { .. })
    ));
}

#[test]
fn stale_segment_that_does_not_follow_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (want, _) = fill(dir.path(), 100);
    // A leftover segment far past the end (e.g. a truncation whose directory
    // update was lost) must not be served.
    let stale = dir.path().join(format!("{:020}.log", 5000));
    std::fs::copy(segment_files(dir.path(), "log")[0].clone(), &stale).unwrap();
    let report = assert_survivors(dir.path(), &want, want.len());
    assert_eq!(report.truncations.len(), 1);
    assert!(!stale.exists());
}
