//! Snapshot archives: take one from a (compacted) log, stream it in random
//! chunk sizes with an interruption and a resume, refuse corrupt or
//! misplaced chunks, install it over another partition without a restart,
//! and survive a crash at each step of the install. Seeded; replay with
//! `STORAGE_SEED=<seed>`.

mod common;

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;

use common::batch::{self, NewRecord};
use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use storage::snapshot::read_snapshot_meta;
use storage::{
    Cleanup, Clock, Fault, FaultInjector, FaultPoint, Log, LogConfig, SnapshotInstaller,
    SnapshotReader, StorageError, SNAPSHOT_CHUNK_BYTES_MAX,
};

fn config(faults: &FaultInjector) -> LogConfig {
    LogConfig {
        segment_bytes_max: 8 << 10,
        index_interval_bytes: 256,
        cleanup: Cleanup::Compact {
            tombstone_grace_ms: 0,
        },
        clock: Clock::Manual(Rc::new(Cell::new(1_000_000))),
        faults: faults.clone(),
        ..small_config()
    }
}

/// A compacted source log with several sealed segments and a snapshot of
/// it in `snap`; returns the log and the batches the snapshot covers.
fn source(dir: &Path, snap: &Path, extra: &[u8]) -> (Log, Vec<(u64, u64, Vec<u8>)>) {
    let (mut log, _) = Log::open(dir, config(&FaultInjector::new())).unwrap();
    for i in 0..120u64 {
        let recs: Vec<NewRecord> = (0..3)
            .map(|j| NewRecord {
                key: Some(format!("k{}", (i * 3 + j) % 250).into_bytes()),
                value: Some(vec![b'a' + (i % 26) as u8; 100 + (i as usize % 7) * 20]),
            })
            .collect();
        log.append(&batch::build(&recs, 0), 1 + i / 40).unwrap();
    }
    log.roll().unwrap();
    log.sync_now().unwrap();
    let rep = log.compact(u64::MAX).unwrap();
    assert!(rep.records_removed > 0);
    log.move_start(5).unwrap();
    let meta = log.take_snapshot(snap, u64::MAX, extra.to_vec()).unwrap();
    assert_eq!(meta.last_included_offset, log.next_offset() - 1);
    assert_eq!(meta.log_start_offset, 5);
    let want = read_all(&log);
    (log, want)
}

/// A partition with other content, to be replaced.
fn old_partition(dir: &Path, faults: &FaultInjector) -> (Log, Vec<(u64, u64, Vec<u8>)>) {
    let (mut log, _) = Log::open(dir, config(faults)).unwrap();
    for i in 0..30 {
        log.append(&batch(1000 + i, 2, 300, 0), 1).unwrap();
    }
    log.sync_now().unwrap();
    let all = read_all(&log);
    (log, all)
}

fn receive_all(reader: &SnapshotReader, inst: &mut SnapshotInstaller) {
    for c in reader.chunks(inst.next_offset(), SNAPSHOT_CHUNK_BYTES_MAX) {
        let c = c.unwrap();
        inst.write_chunk(c.offset, &c.data, c.crc).unwrap();
    }
    assert!(inst.is_complete());
}

#[test]
fn archive_streams_in_random_chunks_resumes_and_installs() {
    let seed = seed("archive_streams_in_random_chunks_resumes_and_installs");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("snap");
    let extra = b"producer and group state".to_vec();
    let (mut src, want) = source(&tmp.path().join("src"), &snap, &extra);
    // The source goes on changing; the archive (hard links) does not.
    src.move_start(src.segment_bases()[2]).unwrap();
    src.compact(u64::MAX).unwrap();

    let dst_dir = tmp.path().join("dst");
    let faults = FaultInjector::new();
    let (mut dst, _) = old_partition(&dst_dir, &faults);
    let reader = SnapshotReader::open(&snap).unwrap();
    let total = reader.total_bytes();
    let mut inst = SnapshotInstaller::new(&dst_dir).unwrap();
    // Bounded: every chunk moves the offset forward by at least one byte.
    let mut chunks = 0u32;
    let mut interrupted = false;
    while !inst.is_complete() {
        let size = if rng.gen_ratio(1, 8) {
            rng.gen_range(1..=SNAPSHOT_CHUNK_BYTES_MAX)
        } else {
            rng.gen_range(1..=16 << 10)
        };
        let at = inst.next_offset();
        let c = reader.read_chunk(at, size).unwrap();
        assert!(c.data.len() <= SNAPSHOT_CHUNK_BYTES_MAX && !c.data.is_empty());
        assert_eq!(c.crc, crc32c::crc32c(&c.data));
        chunks += 1;
        if !interrupted && at + c.data.len() as u64 > total / 2 {
            // The connection drops mid-chunk: a torn chunk fails its CRC and
            // changes nothing; a chunk at the wrong offset is refused; the
            // sender resumes from the installer's offset with a new reader.
            interrupted = true;
            let cut = c.data.len() / 2;
            assert!(inst.write_chunk(at, &c.data[..cut], c.crc).is_err() || cut == 0);
            let mut bad = c.data.clone();
            let i = rng.gen_range(0..bad.len());
            bad[i] ^= 0x40;
            assert!(matches!(
                inst.write_chunk(at, &bad, c.crc),
                Err(StorageError::Archive { .. })
            ));
            let ahead = reader.read_chunk(at + 1, 100).unwrap();
            assert!(inst
                .write_chunk(ahead.offset, &ahead.data, ahead.crc)
                .is_err());
            assert_eq!(inst.next_offset(), at);
            let resumed = SnapshotReader::open(&snap).unwrap();
            let c = resumed.read_chunk(inst.next_offset(), size).unwrap();
            inst.write_chunk(c.offset, &c.data, c.crc).unwrap();
            continue;
        }
        inst.write_chunk(c.offset, &c.data, c.crc).unwrap();
        assert_eq!(inst.next_offset(), at + c.data.len() as u64);
        assert_eq!(c.done, inst.next_offset() == total);
    }
    assert!(interrupted, "seed {seed}: {chunks} chunks, no interruption");
    let meta = dst.install_snapshot(inst).unwrap();
    assert_eq!(meta.extra, extra);
    assert!(!tmp.path().join("dst.staging").exists());
    assert_eq!(dst.log_start_offset(), 5);
    assert_eq!(dst.next_offset(), meta.last_included_offset + 1);
    assert!(
        read_all(&dst) == want,
        "seed {seed}: installed batches differ"
    );
    assert_eq!(read_snapshot_meta(&dst_dir).unwrap().unwrap(), meta);
    // The reopened partition takes appends after the archive, and keeps
    // everything across another reopen.
    let mut b = batch(7, 2, 50, 0);
    batch::stamp(
        &mut b,
        dst.next_offset(),
        meta.last_included_term,
        dst.next_entry_index(),
    );
    dst.append_replicated(&b).unwrap();
    dst.sync_now().unwrap();
    let after = read_all(&dst);
    drop(dst);
    let (dst, report) = Log::open(&dst_dir, config(&faults)).unwrap();
    assert!(report.truncations.is_empty(), "{report:?}");
    assert!(read_all(&dst) == after);
}

#[test]
fn bad_archives_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("snap");
    let (_src, _) = source(&tmp.path().join("src"), &snap, b"x");
    let reader = SnapshotReader::open(&snap).unwrap();
    // A file whose bytes differ from the manifest (chunk CRC still right,
    // as if the sender read damaged data) fails the install.
    let dst_dir = tmp.path().join("dst");
    let faults = FaultInjector::new();
    let (mut dst, old) = old_partition(&dst_dir, &faults);
    let mut inst = SnapshotInstaller::new(&dst_dir).unwrap();
    let mut refused = false;
    for c in reader.chunks(0, 4096) {
        let mut c = c.unwrap();
        if c.offset > 8192 {
            let last = c.data.len() - 1;
            c.data[last] ^= 1;
            c.crc = crc32c::crc32c(&c.data);
        }
        if inst.write_chunk(c.offset, &c.data, c.crc).is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused && !inst.is_complete());
    assert!(dst.install_snapshot(inst).is_err());
    assert!(read_all(&dst) == old, "the old partition must be untouched");
    // A damaged manifest is refused at its CRC.
    let mut inst = SnapshotInstaller::new(&dst_dir).unwrap();
    let mut c = reader.read_chunk(0, 4096).unwrap();
    c.data[14] ^= 1;
    c.crc = crc32c::crc32c(&c.data);
    assert!(inst.write_chunk(0, &c.data, c.crc).is_err());
    // Taking a snapshot with nothing sealed is refused.
    let empty_dir = tmp.path().join("empty");
    let (empty, _) = Log::open(&empty_dir, config(&faults)).unwrap();
    assert!(empty
        .take_snapshot(&tmp.path().join("s2"), u64::MAX, vec![])
        .is_err());
}

#[test]
fn crash_during_install_leaves_the_old_or_the_new_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("snap");
    let (_src, want) = source(&tmp.path().join("src"), &snap, b"e");
    let reader = SnapshotReader::open(&snap).unwrap();
    let dst_dir = tmp.path().join("dst");
    let faults = FaultInjector::new();
    let (mut dst, old) = old_partition(&dst_dir, &faults);

    // Interrupted transfer: the installer is dropped half-way (process
    // crash); the old partition is untouched and still takes writes.
    let mut inst = SnapshotInstaller::new(&dst_dir).unwrap();
    let half = reader
        .read_chunk(0, (reader.total_bytes() / 2) as usize)
        .unwrap();
    inst.write_chunk(0, &half.data, half.crc).unwrap();
    drop(inst);
    assert!(read_all(&dst) == old);
    dst.append(&batch(5000, 1, 10, 0), 1).unwrap();
    dst.sync_now().unwrap();
    let old = read_all(&dst);

    // Power cut before the directory exchange: the old partition survives.
    let mut inst = SnapshotInstaller::new(&dst_dir).unwrap();
    receive_all(&reader, &mut inst);
    faults.arm(FaultPoint::Install, Fault::PowerCut, 0);
    assert!(matches!(
        dst.install_snapshot(inst),
        Err(StorageError::Crashed { .. })
    ));
    faults.disarm();
    drop(dst);
    let (dst, report) = Log::open(&dst_dir, config(&faults)).unwrap();
    assert!(report.truncations.is_empty());
    assert!(
        read_all(&dst) == old,
        "crash before the exchange: old partition"
    );

    // Power cut after the exchange: the new partition is in place.
    let mut dst = dst;
    let mut inst = SnapshotInstaller::new(&dst_dir).unwrap();
    receive_all(&reader, &mut inst);
    faults.arm(FaultPoint::Install, Fault::PowerCut, 1);
    assert!(dst.install_snapshot(inst).is_err());
    faults.disarm();
    drop(dst);
    let (dst, report) = Log::open(&dst_dir, config(&faults)).unwrap();
    assert!(report.truncations.is_empty());
    assert!(
        read_all(&dst) == want,
        "crash after the exchange: new partition"
    );
    // The replaced partition left under the staging name is wiped by the
    // next installer.
    assert!(tmp.path().join("dst.staging").exists());
    let inst = SnapshotInstaller::new(&dst_dir).unwrap();
    let left: Vec<_> = std::fs::read_dir(inst.staging_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec!["transfer.id"], "only the new installer's mark");
}

#[test]
fn a_transfer_resumes_after_a_restart_of_the_receiver_from_its_durable_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("snap");
    let (src, want) = source(&tmp.path().join("src"), &snap, b"extra");
    // Planned on one thread, taken on another: the same archive.
    let plan = src.plan_snapshot(u64::MAX).unwrap();
    assert_eq!(plan.last_entry_index, src.last_entry_index());
    let snap2 = tmp.path().join("snap2");
    let taken = std::thread::spawn(move || plan.take(&snap2, b"extra".to_vec()))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(read_snapshot_meta(&snap).unwrap().unwrap(), taken);
    let reader = SnapshotReader::open(&snap).unwrap();
    assert_eq!(
        SnapshotReader::open(&tmp.path().join("snap2"))
            .unwrap()
            .archive_id(),
        reader.archive_id()
    );

    let dst_dir = tmp.path().join("dst");
    let faults = FaultInjector::new();
    let (mut dst, _) = old_partition(&dst_dir, &faults);
    assert!(SnapshotInstaller::resume(&dst_dir).unwrap().is_none());
    let mut inst = SnapshotInstaller::new(&dst_dir).unwrap();
    // Odd chunk sizes: the cut falls inside a file.
    for c in reader.chunks(0, 3001).take(7) {
        let c = c.unwrap();
        inst.write_chunk(c.offset, &c.data, c.crc).unwrap();
    }
    let durable = inst.next_offset();
    assert_eq!(inst.archive_id(), Some(reader.archive_id()));
    drop(inst); // the receiver stops

    let mut inst = SnapshotInstaller::resume(&dst_dir).unwrap().unwrap();
    assert_eq!(inst.next_offset(), durable);
    assert_eq!(inst.archive_id(), Some(reader.archive_id()));
    receive_all(&reader, &mut inst);
    dst.install_snapshot(inst).unwrap();
    assert!(read_all(&dst) == want, "resumed install differs");

    // A byte of the partial file damaged while the receiver was down: the
    // resume goes on, and the file's CRC fails the install at its end.
    let dst2_dir = tmp.path().join("dst2");
    let (mut dst2, old) = old_partition(&dst2_dir, &faults);
    let mut inst = SnapshotInstaller::new(&dst2_dir).unwrap();
    for c in reader.chunks(0, 3001).take(7) {
        let c = c.unwrap();
        inst.write_chunk(c.offset, &c.data, c.crc).unwrap();
    }
    let staging = inst.staging_dir().to_path_buf();
    drop(inst);
    let partial = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&partial).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&partial, &bytes).unwrap();
    let mut inst = SnapshotInstaller::resume(&dst2_dir).unwrap().unwrap();
    let mut failed = false;
    for c in reader.chunks(inst.next_offset(), SNAPSHOT_CHUNK_BYTES_MAX) {
        let c = c.unwrap();
        if inst.write_chunk(c.offset, &c.data, c.crc).is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "a damaged staged file went unnoticed");
    assert!(dst2.install_snapshot(inst).is_err());
    assert!(read_all(&dst2) == old, "the old partition must stay whole");
}
