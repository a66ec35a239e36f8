//! Key compaction: a seeded model test (random keyed appends, tombstones,
//! rolls, syncs, reads with upper bounds, compaction at random bounds,
//! injected compaction I/O errors, reopen, truncation above the bound), a
//! crash at every stage of a segment swap (old or new, never neither), and
//! the accounting of batches whose records have gaps. Replay a seed with
//! `STORAGE_SEED=<seed>`.

mod common;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use common::batch::{self, NewRecord};
use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use storage::{Cleanup, Clock, Fault, FaultInjector, FaultPoint, Log, LogConfig, StorageError};

/// ~2400 operations in all keep this test around a second or two (debug).
const OPS_PER_SEED: usize = 400;
const SEEDS_PER_RUN: u64 = 6;
/// Few keys, so most records are superseded.
const KEY_COUNT: u64 = 8;
const GRACE_MS: u64 = 300;

#[derive(Clone, Debug, PartialEq, Eq)]
struct MRec {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    ts: i64,
}

/// A record as read back: offset, key, value.
type Got = (u64, Option<Vec<u8>>, Option<Vec<u8>>);

fn config(clock: &Rc<Cell<i64>>, faults: &FaultInjector) -> LogConfig {
    LogConfig {
        segment_bytes_max: 4 << 10,
        index_interval_bytes: 256,
        cleanup: Cleanup::Compact {
            tombstone_grace_ms: GRACE_MS,
        },
        clock: Clock::Manual(clock.clone()),
        faults: faults.clone(),
        ..small_config()
    }
}

/// Every record a full read returns, checking that batch bases increase and
/// that each batch's records lie in `[base, next batch's base)`.
fn read_records(log: &Log, ctx: &str) -> Vec<Got> {
    let batches = read_all(log);
    let mut out: Vec<Got> = Vec::new();
    for (i, (base, _, bytes)) in batches.iter().enumerate() {
        let span_end = batches.get(i + 1).map_or(log.next_offset(), |b| b.0);
        assert!(*base < span_end, "{ctx}: batch bases must increase");
        for r in batch::records(bytes) {
            let r = r.unwrap_or_else(|e| panic!("{ctx}: malformed record: {e}"));
            let o = base + r.offset_delta;
            assert!(o < span_end, "{ctx}: record {o} past its batch's span");
            if let Some(last) = out.last() {
                assert!(
                    o > last.0,
                    "{ctx}: offsets must increase ({} then {o})",
                    last.0
                );
            }
            out.push((o, r.key.map(<[u8]>::to_vec), r.value.map(<[u8]>::to_vec)));
        }
    }
    out
}

struct Model {
    /// Every record appended and not truncated, by its (unchanging) offset.
    recs: BTreeMap<u64, MRec>,
    batch_bases: Vec<u64>,
    next: u64,
    /// The highest bound ever passed to `compact`: records at or above it
    /// are never removed, and truncation stays above it (Raft never
    /// truncates committed entries).
    committed: u64,
}

impl Model {
    fn newest(&self, key: &[u8]) -> Option<(u64, &MRec)> {
        self.recs
            .iter()
            .rev()
            .find(|(_, r)| r.key.as_deref() == Some(key))
            .map(|(o, r)| (*o, r))
    }
}

/// What must hold at any time, compacted or not.
fn check(log: &Log, m: &Model, ctx: &str) -> Vec<Got> {
    assert_eq!(log.next_offset(), m.next, "{ctx}: next offset");
    let got = read_records(log, ctx);
    let mut present = BTreeMap::new();
    for (o, k, v) in &got {
        let want = m
            .recs
            .get(o)
            .unwrap_or_else(|| panic!("{ctx}: offset {o} was never appended"));
        assert_eq!(
            (&want.key, &want.value),
            (k, v),
            "{ctx}: record {o} changed"
        );
        present.insert(*o, ());
    }
    for (o, r) in &m.recs {
        if *o >= m.committed || r.key.is_none() {
            assert!(
                present.contains_key(o),
                "{ctx}: record {o} (at/above the bound or keyless) is gone"
            );
        }
    }
    for k in 0..KEY_COUNT {
        let key = format!("k{k}").into_bytes();
        let Some((newest, rec)) = m.newest(&key) else {
            continue;
        };
        let last = got
            .iter()
            .rev()
            .find(|(_, gk, _)| gk.as_deref() == Some(&key[..]));
        match (last, &rec.value) {
            (Some((o, _, _)), _) => assert_eq!(
                *o, newest,
                "{ctx}: key k{k}: a full read ends with offset {o}, the newest is {newest}"
            ),
            (None, Some(_)) => panic!(
                "{ctx}: key k{k}: newest value {newest} lost; model has {:?}, read has {:?}",
                m.recs
                    .iter()
                    .filter(|r| r.1.key.as_deref() == Some(&key[..]))
                    .map(|r| *r.0)
                    .collect::<Vec<_>>(),
                got.iter().map(|g| g.0).collect::<Vec<_>>()
            ),
            // The newest is a tombstone that compaction dropped: absent.
            (None, None) => {}
        }
    }
    got
}

/// What must hold right after a compaction: below `clean_offset` nothing
/// superseded and no expired tombstone is left.
fn check_clean(got: &[Got], m: &Model, clean_offset: u64, now_ms: i64, ctx: &str) {
    for (o, k, v) in got.iter().filter(|g| g.0 < clean_offset) {
        let Some(k) = k else { continue };
        let newer = m
            .recs
            .range(o + 1..clean_offset)
            .find(|(_, r)| r.key.as_ref() == Some(k));
        assert!(
            newer.is_none(),
            "{ctx}: record {o} survived compaction though {} supersedes it below {clean_offset}",
            newer.map_or(0, |n| *n.0)
        );
        if v.is_none() {
            let ts = m.recs[o].ts;
            assert!(
                ts >= now_ms - GRACE_MS as i64,
                "{ctx}: tombstone {o} (ts {ts}) survived past the grace (now {now_ms})"
            );
        }
    }
}

fn run(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let clock = Rc::new(Cell::new(1_000_000i64));
    let faults = FaultInjector::new();
    let (mut log, _) = Log::open(dir.path(), config(&clock, &faults)).unwrap();
    let mut m = Model {
        recs: BTreeMap::new(),
        batch_bases: Vec::new(),
        next: 0,
        committed: 0,
    };
    let mut tag = 0u64;
    let mut compactions = 0u32;
    let mut removed = 0u64;
    let trace = std::env::var("STORAGE_TRACE").is_ok();
    for step in 0..OPS_PER_SEED {
        let ctx = format!("seed {seed} step {step}");
        let op = rng.gen_range(0..100);
        if trace {
            println!(
                "{ctx}: op {op} next {} committed {} durable {} segs {:?}",
                m.next,
                m.committed,
                log.durable_offset(),
                log.segment_bases()
            );
        }
        let result: Result<(), StorageError> = match op {
            0..=44 => {
                clock.set(clock.get() + rng.gen_range(0..40));
                let n = rng.gen_range(1..=4);
                let recs: Vec<MRec> = (0..n)
                    .map(|_| {
                        tag += 1;
                        let key = (!rng.gen_ratio(1, 20))
                            .then(|| format!("k{}", rng.gen_range(0..KEY_COUNT)).into_bytes());
                        let value = (!rng.gen_ratio(1, 5)).then(|| {
                            let mut v = format!("v{tag}-").into_bytes();
                            v.resize(v.len() + rng.gen_range(0..120), b'x');
                            v
                        });
                        MRec {
                            key,
                            value,
                            ts: clock.get(),
                        }
                    })
                    .collect();
                let nr: Vec<NewRecord> = recs
                    .iter()
                    .map(|r| NewRecord {
                        key: r.key.clone(),
                        value: r.value.clone(),
                    })
                    .collect();
                let b = batch::build(&nr, clock.get());
                log.append(&b, 1).map(|info| {
                    assert_eq!(info.base_offset, m.next, "{ctx}: append offset");
                    m.batch_bases.push(m.next);
                    for r in recs {
                        m.recs.insert(m.next, r);
                        m.next += 1;
                    }
                })
            }
            45..=52 => log.roll(),
            53..=64 => log.sync_now().map(|_| ()),
            65..=79 => {
                if rng.gen_ratio(4, 5) {
                    log.sync_now().unwrap();
                }
                // Mostly a rising commit index; sometimes a lower one (a
                // restarted node learns the commit index again).
                let bound = if rng.gen_ratio(1, 5) {
                    rng.gen_range(0..=m.next)
                } else {
                    rng.gen_range(m.committed.min(m.next)..=m.next)
                };
                let before = log.next_offset();
                // The caller's promise holds even if the round fails part-way
                // (earlier segments may be swapped already).
                m.committed = m.committed.max(bound);
                log.compact(bound).map(|rep| {
                    if trace {
                        println!("{ctx}: compact({bound}): {rep:?}");
                    }
                    compactions += 1;
                    removed += rep.records_removed;
                    assert_eq!(log.next_offset(), before, "{ctx}: compaction moved the end");
                    assert!(
                        rep.clean_offset <= bound.max(log.segment_bases()[0]),
                        "{ctx}"
                    );
                    let got = check(&log, &m, &format!("{ctx} after compact({bound})"));
                    check_clean(&got, &m, rep.clean_offset, clock.get(), &ctx);
                })
            }
            80..=87 => {
                let from = rng.gen_range(log.log_start_offset()..=m.next);
                let end = rng.gen_range(from..=m.next + 1);
                let r = log.read(from, rng.gen_range(1..8000), end).unwrap();
                let mut pos = 0;
                while pos < r.bytes.len() {
                    let h = batch::check(&r.bytes[pos..]).unwrap();
                    let bytes = &r.bytes[pos..pos + h.batch_bytes as usize];
                    for rec in batch::records(bytes) {
                        let o = h.base_offset + rec.unwrap().offset_delta;
                        assert!(o < end, "{ctx}: read({from}, end {end}) served offset {o}");
                        assert!(
                            o < r.next_offset,
                            "{ctx}: next offset behind a served record"
                        );
                    }
                    pos += h.batch_bytes as usize;
                }
                if !r.bytes.is_empty() {
                    assert!(r.next_offset > from, "{ctx}: read did not advance");
                }
                Ok(())
            }
            88..=91 => {
                drop(log);
                let (l, report) = Log::open(dir.path(), config(&clock, &faults)).unwrap();
                assert!(
                    report.truncations.is_empty(),
                    "{ctx}: reopen cut: {report:?}"
                );
                log = l;
                check(&log, &m, &format!("{ctx} after reopen"));
                Ok(())
            }
            92..=95 => {
                let cands: Vec<u64> = m
                    .batch_bases
                    .iter()
                    .copied()
                    .filter(|&b| b >= m.committed)
                    .collect();
                if cands.is_empty() {
                    Ok(())
                } else {
                    let at = cands[rng.gen_range(0..cands.len())];
                    log.truncate_suffix(at).map(|()| {
                        m.recs.retain(|&o, _| o < at);
                        m.batch_bases.retain(|&b| b < at);
                        m.next = at;
                    })
                }
            }
            _ => {
                faults.arm(FaultPoint::Compact, Fault::Eio, rng.gen_range(0..6));
                Ok(())
            }
        };
        match result {
            Ok(()) => {}
            Err(StorageError::Io { .. }) | Err(StorageError::Poisoned { .. }) => {
                // An injected EIO: before the swap nothing changed and the
                // log stays writable; after it, the log is poisoned.
                faults.disarm();
                if log.poisoned().is_some() {
                    drop(log);
                    let (l, report) = Log::open(dir.path(), config(&clock, &faults)).unwrap();
                    assert!(report.truncations.is_empty(), "{ctx}: {report:?}");
                    log = l;
                }
                check(&log, &m, &format!("{ctx} after a failed compaction"));
            }
            Err(e) => panic!("{ctx}: unexpected error {e}"),
        }
        if step % 20 == 0 {
            check(&log, &m, &ctx);
        }
    }
    faults.disarm();
    log.sync_now().unwrap();
    m.committed = m.next;
    let rep = log.compact(m.next).unwrap();
    removed += rep.records_removed;
    let got = check(&log, &m, &format!("seed {seed} end"));
    check_clean(
        &got,
        &m,
        rep.clean_offset,
        clock.get(),
        &format!("seed {seed} end"),
    );
    assert!(
        compactions > 0 && removed > 0,
        "seed {seed}: compaction never removed anything"
    );
}

#[test]
fn random_compaction_keeps_newest_per_key_and_offsets() {
    let seed = seed("random_compaction_keeps_newest_per_key_and_offsets");
    for i in 0..SEEDS_PER_RUN {
        run(seed.wrapping_add(i));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// Batches whose base lies in `[from, to)`.
fn batches_in(all: &[(u64, u64, Vec<u8>)], from: u64, to: u64) -> Vec<(u64, u64, Vec<u8>)> {
    all.iter()
        .filter(|b| b.0 >= from && b.0 < to)
        .cloned()
        .collect()
}

/// 60 batches of 3 records over 5 keys (every seventh batch tombstones),
/// in several small sealed segments, synced; the clock then moves past the
/// tombstone grace.
fn fixture(dir: &Path, clock: &Rc<Cell<i64>>) {
    let (mut log, _) = Log::open(dir, config(clock, &FaultInjector::new())).unwrap();
    for i in 0..60u64 {
        let recs: Vec<NewRecord> = (0..3)
            .map(|j| NewRecord {
                key: Some(format!("k{}", (i * 3 + j) % 5).into_bytes()),
                value: (i % 7 != 3).then(|| vec![b'a' + (i % 26) as u8; 150]),
            })
            .collect();
        log.append(&batch::build(&recs, clock.get()), 1).unwrap();
        clock.set(clock.get() + 20);
    }
    log.roll().unwrap();
    log.sync_now().unwrap();
    drop(log);
    clock.set(clock.get() + 10 * GRACE_MS as i64);
}

/// Names in `dir` ending in `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect()
}

#[test]
fn the_job_run_on_another_thread_gives_what_compact_gives() {
    let clock = Rc::new(Cell::new(1_000_000i64));
    let none = FaultInjector::new();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fixture(a.path(), &clock);
    copy_dir(a.path(), b.path());
    let open = |d: &Path| Log::open(d, config(&clock, &none)).unwrap().0;
    let mut inline = open(a.path());
    let want = inline.compact(u64::MAX).unwrap();
    assert!(want.segments_rewritten >= 3, "{want:?}");

    let mut log = open(b.path());
    let before = read_all(&log);
    let job = log.plan_compaction(u64::MAX).unwrap();
    let bases = log.segment_bases();
    assert_eq!(job.reach_offset(), *bases.last().unwrap());
    let last = job.last_entry().unwrap();
    assert_eq!(last.1, 1, "the term of the last sealed batch");
    // The job is `Send` and runs with the log untouched meanwhile: reads
    // still see the old segments (their inodes stay mapped).
    let done = std::thread::spawn(move || job.run()).join().unwrap();
    assert!(read_all(&log) == before, "the log changed before the swap");
    let got = log.finish_compaction(done).unwrap();
    assert_eq!(got, want);
    assert!(read_all(&log) == read_all(&inline));
    assert!(files_ending(b.path(), ".swap").is_empty());
    drop(log);
    let (log, report) = Log::open(b.path(), config(&clock, &none)).unwrap();
    assert!(report.truncations.is_empty(), "{report:?}");
    assert_eq!(
        report.segments_scanned, 1,
        "only the active segment: {report:?}"
    );
    assert!(read_all(&log) == read_all(&inline));
}

#[test]
fn a_segment_retention_removes_while_the_job_runs_is_skipped_and_not_brought_back() {
    let clock = Rc::new(Cell::new(1_000_000i64));
    let none = FaultInjector::new();
    let whole = tempfile::tempdir().unwrap();
    fixture(whole.path(), &clock);
    let open = |d: &Path| Log::open(d, config(&clock, &none)).unwrap().0;
    let bases = open(whole.path()).segment_bases();
    assert!(bases.len() >= 4, "{bases:?}");
    let cut = bases[2];
    // Retention before the job runs, and after it ran but before the swap.
    for late in [false, true] {
        let ctx = format!("retention after the run: {late}");
        let d = tempfile::tempdir().unwrap();
        copy_dir(whole.path(), d.path());
        let mut log = open(d.path());
        let job = log.plan_compaction(u64::MAX).unwrap();
        let done = if late {
            let done = job.run();
            log.move_start(cut).unwrap();
            done
        } else {
            log.move_start(cut).unwrap();
            job.run()
        };
        let rep = log.finish_compaction(done).unwrap();
        assert!(log.poisoned().is_none(), "{ctx}");
        assert!(rep.segments_rewritten >= 1, "{ctx}: {rep:?}");
        assert_eq!(log.segment_bases()[0], cut, "{ctx}");
        for base in &bases[..2] {
            for ext in ["log", "index", "timeindex"] {
                let p = d.path().join(format!("{base:020}.{ext}"));
                assert!(!p.exists(), "{ctx}: {} is back", p.display());
            }
        }
        assert!(files_ending(d.path(), ".swap").is_empty(), "{ctx}");
        let got = read_all(&log);
        drop(log);
        let (log, report) = Log::open(d.path(), config(&clock, &none)).unwrap();
        assert!(report.truncations.is_empty(), "{ctx}: {report:?}");
        assert_eq!(log.segment_bases()[0], cut, "{ctx}");
        assert!(read_all(&log) == got, "{ctx}: reopened log differs");
        // Every key's newest record above the cut is still there.
        let mut log = log;
        log.compact(u64::MAX).unwrap();
        assert!(read_all(&log) == got, "{ctx}: a second round changed more");
    }
}

#[test]
fn a_stopped_job_stops_at_a_segment_boundary_and_the_log_stays_whole() {
    let clock = Rc::new(Cell::new(1_000_000i64));
    let d = tempfile::tempdir().unwrap();
    fixture(d.path(), &clock);
    let (mut log, _) = Log::open(d.path(), config(&clock, &FaultInjector::new())).unwrap();
    let before = read_all(&log);
    let job = log.plan_compaction(u64::MAX).unwrap();
    job.stopper()
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let rep = log.finish_compaction(job.run()).unwrap();
    assert_eq!(rep.segments_rewritten, 0, "{rep:?}");
    assert_eq!(rep.clean_offset, log.segment_bases()[0], "{rep:?}");
    assert!(read_all(&log) == before);
    assert!(files_ending(d.path(), ".swap").is_empty());
    // The next round does the work.
    assert!(log.compact(u64::MAX).unwrap().segments_rewritten > 0);
}

#[test]
fn a_paced_job_takes_at_least_its_bytes_over_the_rate() {
    let clock = Rc::new(Cell::new(1_000_000i64));
    let d = tempfile::tempdir().unwrap();
    fixture(d.path(), &clock);
    let (mut log, _) = Log::open(d.path(), config(&clock, &FaultInjector::new())).unwrap();
    let sealed = log.data_bytes();
    let mut job = log.plan_compaction(u64::MAX).unwrap();
    // The job reads the sealed bytes at least twice (key map, then the
    // removals), so at this rate it cannot end sooner than `floor`.
    let rate = 200_000;
    job.pace(rate);
    let floor = std::time::Duration::from_secs_f64(2.0 * sealed as f64 / rate as f64)
        .saturating_sub(std::time::Duration::from_millis(10));
    let t = std::time::Instant::now();
    let done = job.run();
    let took = t.elapsed();
    log.finish_compaction(done).unwrap();
    assert!(took >= floor, "{took:?} for {sealed} bytes at {rate} B/s");
}

#[test]
fn crash_at_every_stage_of_a_swap_leaves_the_old_or_the_new_segment() {
    let src = tempfile::tempdir().unwrap();
    let clock = Rc::new(Cell::new(1_000_000i64));
    let none = FaultInjector::new();
    fixture(src.path(), &clock);
    let open = |d: &Path, f: &FaultInjector| Log::open(d, config(&clock, f)).unwrap().0;
    let (before, bases, end) = {
        let log = open(src.path(), &none);
        (read_all(&log), log.segment_bases(), log.next_offset())
    };
    let twin = tempfile::tempdir().unwrap();
    copy_dir(src.path(), twin.path());
    let (after, rewritten) = {
        let mut log = open(twin.path(), &none);
        let rep = log.compact(u64::MAX).unwrap();
        assert!(rep.segments_rewritten >= 3, "{rep:?}");
        (read_all(&log), rep.segments_rewritten)
    };
    // Segment spans whose contents compaction changes, oldest first.
    let spans: Vec<(u64, u64)> = bases
        .windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|&(a, b)| batches_in(&before, a, b) != batches_in(&after, a, b))
        .collect();
    assert_eq!(spans.len(), rewritten);
    for kind in [Fault::PowerCut, Fault::Eio] {
        // Three fault stages per rewritten segment.
        for skip in 0..(3 * rewritten as u32) {
            let ctx = format!("{kind:?} at hit {skip}");
            let d = tempfile::tempdir().unwrap();
            copy_dir(src.path(), d.path());
            let faults = FaultInjector::new();
            faults.arm(FaultPoint::Compact, kind, skip);
            {
                let mut log = open(d.path(), &faults);
                let r = log.compact(u64::MAX);
                assert!(r.is_err(), "{ctx}: the fault did not fire: {r:?}");
                assert_eq!(faults.fired(), 1, "{ctx}");
            }
            let (mut log, report) = Log::open(d.path(), config(&clock, &none)).unwrap();
            assert!(report.truncations.is_empty(), "{ctx}: {report:?}");
            let leftovers = std::fs::read_dir(d.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".swap")
                })
                .count();
            assert_eq!(leftovers, 0, "{ctx}: swap files left after open");
            assert_eq!(log.next_offset(), end, "{ctx}");
            let got = read_all(&log);
            let mut new_count = 0;
            for (j, &(a, b)) in spans.iter().enumerate() {
                let g = batches_in(&got, a, b);
                if g == batches_in(&after, a, b) {
                    assert_eq!(new_count, j, "{ctx}: segments must swap oldest first");
                    new_count += 1;
                } else {
                    assert!(
                        g == batches_in(&before, a, b),
                        "{ctx}: segment {a} is neither the old nor the new one"
                    );
                }
            }
            // Stage 2 (after the renames) is the commit point.
            let want_new = (skip / 3) as usize + usize::from(skip % 3 == 2);
            assert_eq!(new_count, want_new, "{ctx}");
            for (a, b) in bases.windows(2).map(|w| (w[0], w[1])) {
                if !spans.contains(&(a, b)) {
                    assert_eq!(batches_in(&got, a, b), batches_in(&before, a, b), "{ctx}");
                }
            }
            // The interrupted compaction completes on the next round.
            log.compact(u64::MAX).unwrap();
            assert!(
                read_all(&log) == after,
                "{ctx}: finishing did not reach the same result"
            );
        }
    }
}

fn rec(k: &str, v: Option<&str>) -> NewRecord {
    NewRecord {
        key: Some(k.into()),
        value: v.map(|v| v.as_bytes().to_vec()),
    }
}

#[test]
fn batches_with_gaps_keep_their_span_for_reads_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Rc::new(Cell::new(1_000_000i64));
    let none = FaultInjector::new();
    let (mut log, _) = Log::open(dir.path(), config(&clock, &none)).unwrap();
    // Segment [0, 4): a b c d; b and the trailing d are superseded later.
    let b0 = [
        rec("a", Some("a0")),
        rec("b", Some("b0")),
        rec("c", Some("c0")),
        rec("d", Some("d0")),
    ];
    log.append(&batch::build(&b0, 0), 1).unwrap();
    log.roll().unwrap();
    // Segment [4, 6): x then the only record of a batch that goes entirely.
    log.append(&batch::build(&[rec("x", Some("x0"))], 0), 2)
        .unwrap();
    log.append(&batch::build(&[rec("y", Some("y0"))], 0), 3)
        .unwrap();
    log.roll().unwrap();
    // Segment [6, 9): supersedes b, d, y.
    let b2 = [
        rec("b", Some("b1")),
        rec("d", Some("d1")),
        rec("y", Some("y1")),
    ];
    log.append(&batch::build(&b2, 0), 3).unwrap();
    log.roll().unwrap();
    log.append(&batch::build(&[rec("z", Some("z"))], 0), 3)
        .unwrap();
    log.sync_now().unwrap();
    let rep = log.compact(9).unwrap();
    assert_eq!(rep.segments_rewritten, 2, "{rep:?}");
    assert_eq!(rep.records_removed, 3, "{rep:?}");
    assert_eq!(log.next_offset(), 10);
    assert_eq!(log.segment_bases(), vec![0, 4, 6, 9]);

    // Batch 0 now holds offsets 0 and 2 only; it still spans [0, 4).
    // `base + record_count` is 2, but offset 2 is not below a bound of 2.
    let r = log.read(0, 1 << 20, 2).unwrap();
    assert!(
        r.bytes.is_empty(),
        "a record at the bound must not be served"
    );
    let r = log.read(0, 1 << 20, 3).unwrap();
    assert_eq!(r.next_offset, 4, "the next read starts past the gap");
    let h = batch::check(r.bytes).unwrap();
    assert_eq!((h.base_offset, h.record_count), (0, 2));
    let deltas: Vec<u64> = batch::records(r.bytes)
        .map(|r| r.unwrap().offset_delta)
        .collect();
    assert_eq!(deltas, vec![0, 2]);
    // Reading from inside the gap returns the batch that spans it.
    let r = log.read(3, 1 << 20, u64::MAX).unwrap();
    assert_eq!(batch::check(r.bytes).unwrap().base_offset, 0);
    assert_eq!(log.term_at(3).unwrap(), 1);
    // Segment [4, 6): x stays, y's batch is its last, so it stays as a
    // header-only placeholder keeping base 5 and term 3.
    let r = log.read(4, 1 << 20, u64::MAX).unwrap();
    let h = batch::check(r.bytes).unwrap();
    assert_eq!((h.base_offset, h.record_count), (4, 1));
    let h2 = batch::check(&r.bytes[h.batch_bytes as usize..]).unwrap();
    assert_eq!((h2.base_offset, h2.term, h2.record_count), (5, 3, 0));
    assert_eq!(r.next_offset, 6);
    assert_eq!(log.term_at(5).unwrap(), 3);
    let want = read_all(&log);
    drop(log);

    // Without indexes recovery scans the compacted segments: their batches
    // end short of the next segment (a gap, not damage).
    for base in [0u64, 4] {
        for ext in ["index", "timeindex"] {
            std::fs::remove_file(dir.path().join(format!("{base:020}.{ext}"))).unwrap();
        }
    }
    let (log, report) = Log::open(dir.path(), config(&clock, &none)).unwrap();
    assert!(report.truncations.is_empty(), "{report:?}");
    assert_eq!(report.indexes_rebuilt, 2);
    assert_eq!(log.next_offset(), 10);
    assert_eq!(log.segment_bases(), vec![0, 4, 6, 9]);
    assert!(read_all(&log) == want);
    drop(log);

    // A segment cut short by damage (zeros, not an exact end) is still cut.
    let p = dir.path().join(format!("{:020}.log", 0));
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len + 64)
        .unwrap();
    for ext in ["index", "timeindex"] {
        std::fs::remove_file(dir.path().join(format!("{:020}.{ext}", 0))).unwrap();
    }
    let (log, report) = Log::open(dir.path(), config(&clock, &none)).unwrap();
    assert_eq!(report.truncations.len(), 1, "{report:?}");
    assert_eq!(log.next_offset(), 2);
}

#[test]
fn compaction_refuses_delete_topics_and_appends_refuse_empty_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    assert!(matches!(
        log.compact(u64::MAX),
        Err(StorageError::Config(_))
    ));
    let mut b = batch::build(&[rec("a", Some("1"))], 0);
    let empty = batch::rebuild(&b, &[]);
    assert!(matches!(
        log.append(&empty, 1),
        Err(StorageError::InvalidBatch(_))
    ));
    batch::stamp(&mut b, 0, 1, 1);
    log.append(&b, 1).unwrap();
    assert_eq!(log.next_offset(), 1);
}
