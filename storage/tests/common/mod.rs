//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

pub mod batch;
pub mod page_cache;

use std::path::{Path, PathBuf};

use batch::NewRecord;
use storage::{Log, LogConfig};

/// A small-segment configuration so tests roll often: 16 KiB segments,
/// an index entry every 512 bytes, no free-space floor.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 16 << 10,
        index_interval_bytes: 512,
        free_bytes_floor: 0,
        ..LogConfig::default()
    }
}

/// A batch of `n` records whose values encode `tag`, so every batch differs.
pub fn batch(tag: u64, n: usize, value_bytes: usize, ts: i64) -> Vec<u8> {
    let recs: Vec<NewRecord> = (0..n)
        .map(|i| {
            let mut v = vec![(tag as u8).wrapping_add(i as u8); value_bytes];
            v[..8.min(value_bytes)].copy_from_slice(&tag.to_le_bytes()[..8.min(value_bytes)]);
            NewRecord {
                key: Some(format!("k{:02}", (tag as usize + i) % 13).into_bytes()),
                value: Some(v),
            }
        })
        .collect();
    batch::build(&recs, ts)
}

/// Every batch from the log start to `end`, as (base offset, term, bytes).
pub fn read_all(log: &Log) -> Vec<(u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = log.log_start_offset();
    let end = log.next_offset();
    // Bounded: each read returns at least one batch or stops.
    for _ in 0..1_000_000 {
        if at >= end {
            break;
        }
        let r = log.read(at, 64 << 10, u64::MAX).expect("read");
        if r.bytes.is_empty() {
            break;
        }
        let mut pos = 0;
        while pos < r.bytes.len() {
            let h = batch::check(&r.bytes[pos..]).expect("served batches pass their crc");
            out.push((
                h.base_offset,
                h.term,
                r.bytes[pos..pos + h.batch_bytes as usize].to_vec(),
            ));
            pos += h.batch_bytes as usize;
        }
        at = r.next_offset;
    }
    out
}

/// The batch bytes as the log stores them (offset, term and entry index
/// stamped).
pub fn stamped(mut b: Vec<u8>, base: u64, term: u64, entry_index: u64) -> Vec<u8> {
    batch::stamp(&mut b, base, term, entry_index);
    b
}

/// Segment log files in `dir`, oldest first.
pub fn segment_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Seed for a randomized test: `STORAGE_SEED` if set, else fresh; printed.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("STORAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("{test}: seed {s} (replay with STORAGE_SEED={s})");
    s
}
