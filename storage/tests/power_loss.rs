//! Power cuts judged by a model of the page cache, not by the log's own
//! bookkeeping: every fdatasync goes through the `Syncer` seam into
//! `common::page_cache::PageCache`, which keeps each file as of its last
//! sync; the cut throws the rest away. Whatever the log reported durable
//! must then survive, byte for byte.

mod common;

use std::collections::BTreeMap;
use std::rc::Rc;

use common::page_cache::PageCache;
use common::*;
use glommio::LocalExecutorBuilder;
use storage::shard::Partition;
use storage::{Log, LogConfig};

fn config_through(cache: &Rc<PageCache>) -> LogConfig {
    LogConfig {
        syncer: Some(cache.clone()),
        ..small_config()
    }
}

/// Reopens the log after the cut and checks that every batch below
/// `durable` (as read before the cut) is there, unchanged, and that the
/// log ends at `durable`: the model lost the never-synced tail.
fn assert_durable_prefix_survives(
    dir: &std::path::Path,
    before: &[(u64, u64, Vec<u8>)],
    durable: u64,
) {
    let (log, _) = Log::open(dir, small_config()).unwrap();
    let after: BTreeMap<u64, (u64, Vec<u8>)> = read_all(&log)
        .into_iter()
        .map(|(base, term, bytes)| (base, (term, bytes)))
        .collect();
    let mut checked = 0;
    for (base, term, bytes) in before.iter().filter(|(base, ..)| *base < durable) {
        let found = after.get(base);
        assert!(
            found.is_some_and(|(t, b)| t == term && b == bytes),
            "offset {base} was reported durable (durable offset {durable}) but after the \
             power cut it is {}",
            match found {
                None => "missing".to_string(),
                Some(_) => "changed".to_string(),
            }
        );
        checked += 1;
    }
    assert!(checked > 0);
    assert_eq!(
        log.next_offset(),
        durable,
        "the batches appended after the last sync were never synced: lost"
    );
}

/// Cuts the power of the page-cache model (which must have held unsynced
/// bytes), then checks what survived against what was reported durable.
fn cut_power_and_check(
    cache: &PageCache,
    dir: &std::path::Path,
    before: &[(u64, u64, Vec<u8>)],
    durable: u64,
) {
    let cut = cache.power_cut(dir).unwrap();
    assert!(
        !cut.restored.is_empty(),
        "the page cache held unsynced bytes"
    );
    assert_durable_prefix_survives(dir, before, durable);
    assert!(cache.file_syncs() > 0, "the rounds went through the seam");
}

#[test]
fn every_offset_sync_now_reported_durable_survives_a_power_cut_of_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = PageCache::new();
    let (mut log, _) = Log::open(dir.path(), config_through(&cache)).unwrap();
    let mut durable = 0;
    for round in 0..40u64 {
        for i in 0..3 {
            let tag = round * 3 + i;
            log.append(&batch(tag, 1 + (tag % 4) as usize, 150, tag as i64), 1)
                .unwrap();
        }
        let reported = log.sync_now().unwrap();
        assert_eq!(reported, log.next_offset());
        assert!(reported > durable);
        durable = reported;
    }
    // Appended, never synced.
    for tag in 1000..1003 {
        log.append(&batch(tag, 2, 150, 0), 1).unwrap();
    }
    assert!(log.segment_bases().len() >= 4, "rolled across segments");
    let before = read_all(&log);
    drop(log);

    cut_power_and_check(&cache, dir.path(), &before, durable);
}

#[test]
fn every_append_a_shard_acknowledged_survives_a_power_cut_of_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let cache = PageCache::new();
    let cfg = config_through(&cache);
    let ex = LocalExecutorBuilder::default().make().unwrap();
    let (before, acked) = ex.run(async move {
        let (log, _) = Log::open(&path, cfg).unwrap();
        let p = Partition::new(log);
        // 16 appenders, 8 appends each (every batch policy: each returns
        // once a sync round covered it; the model's syncs complete without
        // yielding, so rounds are rarely shared here).
        let tasks: Vec<_> = (0..16u64)
            .map(|t| {
                let p = p.clone();
                glommio::spawn_local(async move {
                    let mut acked = Vec::new();
                    for i in 0..8u64 {
                        let tag = t * 100 + i;
                        let b = batch(tag, 1 + (tag % 3) as usize, 150, 0);
                        let info = p.append(&b, 1).await.unwrap();
                        acked.push(info.last_offset);
                    }
                    acked
                })
            })
            .collect();
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await);
        }
        assert!(p.sync_rounds() > 0);
        // Appended, never synced.
        for tag in 5000..5003 {
            p.log_mut().append(&batch(tag, 2, 150, 0), 1).unwrap();
        }
        let before = read_all(&p.log());
        (before, acked)
    });
    assert_eq!(acked.len(), 128);
    let durable = acked.iter().max().unwrap() + 1;

    cut_power_and_check(&cache, dir.path(), &before, durable);
}

#[test]
fn a_sync_round_that_raced_a_truncation_proves_nothing_about_the_rewritten_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = PageCache::new();
    let (mut log, _) = Log::open(dir.path(), config_through(&cache)).unwrap();
    // How many such batches fit in one segment (found on a scratch log).
    let fit = {
        let scratch = tempfile::tempdir().unwrap();
        let (mut l, _) = Log::open(scratch.path(), small_config()).unwrap();
        let mut n = 0u64;
        while l.segment_bases().len() == 1 {
            l.append(&batch(n, 1, 1000, 0), 1).unwrap();
            n += 1;
        }
        n - 1
    };
    // The first segment full but not rolled.
    for tag in 0..fit {
        log.append(&batch(tag, 1, 1000, 0), 1).unwrap();
    }
    let first = read_all(&log);
    // A round begins and its fdatasync runs now (as io_uring's would while
    // the shard goes on)...
    let job = log.begin_sync().unwrap().expect("something to sync");
    storage::syncer::run_round(&job, &*cache).unwrap();
    // ... meanwhile a conflicting leader's entries replace the tail (Raft
    // truncation) with as many bytes as before, and the next batch rolls
    // the segment: sealed at the length the round saw.
    log.truncate_suffix(first[2].0).unwrap();
    for tag in 100..100 + fit - 1 {
        log.append(&batch(tag, 1, 1000, 0), 1).unwrap();
    }
    assert_eq!(log.segment_bases().len(), 2, "the rewritten segment rolled");
    // The round ends: its marks were taken before the truncation.
    log.finish_sync(job, Ok(())).unwrap();
    let durable = log.sync_now().unwrap();
    assert_eq!(durable, log.next_offset());
    let before = read_all(&log);
    drop(log);
    cache.power_cut(dir.path()).unwrap();
    assert_durable_prefix_survives(dir.path(), &before, durable);
}
