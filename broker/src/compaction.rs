//! Background key compaction of compacted topics (`--cleanup compact`).
//!
//! Each shard checks its compacted partitions every
//! `compact_interval_ms` ([`crate::shard`]) and compacts the dirtiest one
//! whose dirty share (bytes of sealed segments above its last clean offset,
//! of all its sealed bytes) reaches `compact_dirty_percent_min`
//! ([`crate::partition::Partition::compact`]). The blocking part of a round
//! (`storage::CompactJob`: reading, rewriting, fdatasyncs, renames) runs on
//! the broker's one compactor thread, paced to `compact_io_mb_per_sec`:
//! so at most one compaction runs per broker, and its I/O budget is the
//! broker's. Not glommio's blocking pool: it has one thread per shard,
//! which the shard's `raft.state` fsyncs use, and a round can take minutes.
//!
//! A shard claims the broker's slot ([`Compactor::claim`]) before it plans
//! a round; a shard that finds it taken tries again at its next check. Every
//! replica compacts its own log below its own commit point, leaders and
//! followers alike.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use storage::{CompactDone, CompactJob};

/// A round for the compactor thread and where its result goes.
struct Work {
    job: CompactJob,
    reply: flume::Sender<CompactDone>,
}

/// The broker's compactor thread, shared by its shards (`Send`, cloned).
#[derive(Clone)]
pub struct Compactor {
    /// At most one round in flight (the slot makes the queue of one
    /// enough: a send never waits).
    tx: flume::Sender<Work>,
    busy: Arc<AtomicBool>,
    bytes_per_sec_max: u64,
}

/// The broker's one compaction slot, held while a shard plans, runs and
/// finishes a round; given back when dropped.
pub struct Slot(Arc<AtomicBool>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Compactor {
    /// Starts the compactor thread; `io_mb_per_sec` is the pace of every
    /// round (0: unpaced). The thread ends when every handle is dropped.
    pub fn start(io_mb_per_sec: u64) -> std::io::Result<Compactor> {
        let (tx, rx) = flume::bounded::<Work>(1);
        std::thread::Builder::new()
            .name("compactor".into())
            .spawn(move || {
                while let Ok(w) = rx.recv() {
                    // The shard may have stopped meanwhile: nobody to tell.
                    let _ = w.reply.send(w.job.run());
                }
            })?;
        Ok(Compactor {
            tx,
            busy: Arc::new(AtomicBool::new(false)),
            bytes_per_sec_max: io_mb_per_sec.saturating_mul(1_000_000),
        })
    }

    /// The broker's compaction slot, if no round holds it.
    pub fn claim(&self) -> Option<Slot> {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Slot(self.busy.clone()))
    }

    /// Runs `job` on the compactor thread, paced, and waits for it without
    /// blocking the shard. `None` if the thread is gone.
    pub async fn run(&self, _slot: &Slot, mut job: CompactJob) -> Option<CompactDone> {
        job.pace(self.bytes_per_sec_max);
        let (reply, done) = flume::bounded(1);
        // Never full: the slot allows one round at a time.
        self.tx.try_send(Work { job, reply }).ok()?;
        done.recv_async().await.ok()
    }
}

/// How dirty a log is, in parts per million of its sealed bytes, if that
/// reaches `min_percent`; `None` below it or with nothing sealed.
pub fn dirty_enough(dirty_bytes: u64, sealed_bytes: u64, min_percent: u8) -> Option<u64> {
    // In u128: bytes times 10^6 passes u64 from 18 TB on.
    let ppm = (u128::from(dirty_bytes) * 1_000_000).checked_div(u128::from(sealed_bytes))?;
    let ppm = u64::try_from(ppm).unwrap_or(u64::MAX);
    (ppm >= u64::from(min_percent) * 10_000).then_some(ppm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_is_compacted_from_its_minimum_dirty_share_on() {
        assert_eq!(dirty_enough(0, 0, 50), None, "nothing sealed");
        assert_eq!(dirty_enough(49, 100, 50), None);
        assert_eq!(dirty_enough(50, 100, 50), Some(500_000));
        assert_eq!(dirty_enough(100, 100, 100), Some(1_000_000));
        assert_eq!(dirty_enough(1, 100, 1), Some(10_000));
        assert_eq!(dirty_enough(u64::MAX, u64::MAX, 100), Some(1_000_000));
    }

    #[test]
    fn one_slot_per_broker_given_back_when_dropped() {
        let c = Compactor::start(0).unwrap();
        let other_shard = c.clone();
        let slot = c.claim().unwrap();
        assert!(other_shard.claim().is_none());
        drop(slot);
        assert!(other_shard.claim().is_some());
    }
}
