//! Disk exhaustion against a real file system: a small ext4 image mounted
//! on a loop device by the test (needs root). Skipped, with a message, only
//! where mounting is impossible.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use storage::{DiskBudget, Log, LogConfig, StorageError};

/// Image size: 24 MiB holds a few 1 MiB segments plus ext4's metadata.
const IMAGE_BYTES: u64 = 24 << 20;

/// A mounted ext4 image; unmounted and removed on drop, even on panic.
struct Mounted {
    _tmp: tempfile::TempDir,
    mount_point: PathBuf,
    mounted: bool,
}

impl Mounted {
    fn new() -> Option<Mounted> {
        let tmp = tempfile::tempdir().ok()?;
        let image = tmp.path().join("fs.img");
        let mount_point = tmp.path().join("mnt");
        std::fs::create_dir(&mount_point).ok()?;
        std::fs::File::create(&image)
            .ok()?
            .set_len(IMAGE_BYTES)
            .ok()?;
        let mut m = Mounted {
            _tmp: tmp,
            mount_point,
            mounted: false,
        };
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .output();
        if !mkfs.is_ok_and(|o| o.status.success()) {
            return None;
        }
        let mount = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&m.mount_point)
            .output();
        if !mount.is_ok_and(|o| o.status.success()) {
            return None;
        }
        m.mounted = true;
        Some(m)
    }

    fn dir(&self) -> PathBuf {
        self.mount_point.join("partition")
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.mount_point)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Busy (a test still holds a file): detach lazily so the loop
                // device goes away once the last file closes.
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&self.mount_point)
                    .status();
            }
        }
    }
}

fn mount_or_skip(test: &str) -> Option<Mounted> {
    let m = Mounted::new();
    if m.is_none() {
        println!("SKIPPED {test}: cannot mount a loop ext4 image here (needs root, mkfs.ext4 and loop devices)");
    }
    m
}

/// Fills the file system with a filler file until the write fails with
/// ENOSPC, leaving `leave_bytes` free by truncating the filler afterwards.
fn fill(at: &Path, leave_bytes: u64) -> PathBuf {
    let p = at.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    let mut written = 0u64;
    // Bounded by the image size.
    for _ in 0..(IMAGE_BYTES / chunk.len() as u64 + 16) {
        match f.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    f.sync_all().unwrap();
    f.set_len(written.saturating_sub(leave_bytes)).unwrap();
    f.sync_all().unwrap();
    p
}

fn config(floor: u64) -> LogConfig {
    LogConfig {
        segment_bytes_max: 1 << 20,
        free_bytes_floor: floor,
        ..small_config()
    }
}

fn append_until_error(log: &mut Log, tag: &mut u64) -> StorageError {
    // Bounded: the image holds fewer than 24 Mi / 1 KiB batches.
    for _ in 0..(IMAGE_BYTES / 1024) {
        *tag += 1;
        if let Err(e) = log.append(&batch(*tag, 2, 400, 0), 1) {
            return e;
        }
    }
    panic!("the file system never filled up");
}

#[test]
fn real_enospc_is_a_retriable_disk_full_and_writes_resume_when_space_returns() {
    let Some(m) = mount_or_skip("real_enospc") else {
        return;
    };
    let (mut log, _) = Log::open(m.dir(), config(0)).unwrap();
    let mut tag = 0;
    for _ in 0..100 {
        tag += 1;
        log.append(&batch(tag, 2, 400, 0), 1).unwrap();
    }
    log.sync_now().unwrap();
    let filler = fill(&m.mount_point, 0);
    // Appends go on into the preallocated active segment, then the roll's
    // fallocate meets the real ENOSPC.
    let e = append_until_error(&mut log, &mut tag);
    assert!(matches!(e, StorageError::DiskFull { .. }), "{e}");
    assert!(e.is_retriable());
    assert!(
        log.poisoned().is_none(),
        "disk full is a state, not a poison"
    );
    let before = read_all(&log);
    assert_eq!(before.len() as u64, tag - 1, "reads continue; nothing lost");
    assert!(matches!(
        log.append(&batch(tag, 2, 400, 0), 1),
        Err(StorageError::DiskFull { .. })
    ));
    assert_eq!(
        log.sync_now().unwrap(),
        log.next_offset(),
        "what was written syncs"
    );
    std::fs::remove_file(&filler).unwrap();
    let info = log.append(&batch(tag, 2, 400, 0), 1).unwrap();
    assert_eq!(info.base_offset, 2 * (tag - 1));
    log.sync_now().unwrap();
    let n = read_all(&log).len();
    drop(log);
    let (log, report) = Log::open(m.dir(), config(0)).unwrap();
    assert!(
        report.truncations.is_empty(),
        "nothing corrupted: {report:?}"
    );
    assert_eq!(read_all(&log).len(), n);
}

#[test]
fn below_the_free_space_floor_appends_fail_and_resume() {
    let Some(m) = mount_or_skip("free_space_floor") else {
        return;
    };
    let floor = 4 << 20;
    let (mut log, _) = Log::open(m.dir(), config(floor)).unwrap();
    log.append(&batch(0, 1, 100, 0), 1).unwrap();
    let filler = fill(&m.mount_point, 2 << 20);
    let mut tag = 1;
    let e = append_until_error(&mut log, &mut tag);
    assert!(
        matches!(&e, StorageError::DiskFull { detail, .. } if detail.contains("floor")),
        "{e}"
    );
    assert!(log.poisoned().is_none());
    assert!(!read_all(&log).is_empty());
    std::fs::remove_file(&filler).unwrap();
    log.append(&batch(tag, 1, 100, 0), 1).unwrap();
}

#[test]
fn broker_byte_budget_refuses_new_segments_until_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let budget = DiskBudget::new(3 * (16 << 10));
    let cfg = LogConfig {
        disk_budget: Some(budget.clone()),
        ..small_config()
    };
    let (mut log, _) = Log::open(dir.path(), cfg).unwrap();
    let mut tag = 0;
    let e = append_until_error(&mut log, &mut tag);
    assert!(
        matches!(&e, StorageError::DiskFull { detail, .. } if detail.contains("budget")),
        "{e}"
    );
    // Retention frees whole segments, and appends resume.
    let bases = log.segment_bases();
    log.move_start(bases[1]).unwrap();
    log.append(&batch(tag, 2, 400, 0), 1).unwrap();
    assert!(budget.bytes_used() <= 3 * (16 << 10));
}
