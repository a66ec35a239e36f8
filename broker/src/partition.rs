//! A partition replica on this shard: its Raft group (which drives the
//! partition log), the idempotent-producer table and the high watermark the
//! group keeps, and what clients ask of a partition: produce, fetch, list
//! offsets. Also its status, its telemetry sample, retention and key
//! compaction.
//!
//! The shard finds the partition and checks that this broker leads it;
//! everything that reads or writes the log goes through here.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use raft::Role;
use storage::{Cleanup, CompactReport, LogConfig, Retired, SyncPolicy};
use wire::{
    Acks, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, OffsetSpec,
    PartitionStatus, ProduceResponse, RecordBatch, ReplicaStatus, WireError,
};

use crate::compaction::Compactor;
use crate::error::{Error, Result};
use crate::producers::{BatchId, Verdict};
use crate::raft_group::{RaftGroup, RaftGroupKind, WaitResult};
use crate::replica;
use crate::runtime::DELETED_SUFFIX;
use crate::telemetry::{PartitionSample, ReplicaSample, SnapshotTransferSample};
use crate::topics::TopicRecord;

/// Longest long poll a fetch may ask for.
const FETCH_WAIT_MS_MAX: u32 = 30_000;
/// Largest fetch response payload (leaves room for the message fields within
/// the default 4 MiB frame limit).
pub(crate) const FETCH_BYTES_MAX: usize = 3 * 1024 * 1024;
/// Produce requests that give no timeout wait this long for a commit.
const PRODUCE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// The longest a produce request may wait for its commit.
const PRODUCE_TIMEOUT_MAX: Duration = Duration::from_secs(300);

/// One partition replica held by this shard.
pub struct Partition {
    pub topic: String,
    pub partition: u32,
    /// The Raft group over the partition log (the shard ticks it and steps
    /// peer messages into it).
    pub group: Rc<RaftGroup>,
}

/// What one compaction round left for the shard: its report (`None` if it
/// failed, which it logged) and the replaced segments' maps to release off
/// the shard.
pub(crate) struct Compacted {
    pub report: Option<CompactReport>,
    pub retired: Retired,
}

impl Partition {
    /// Opens (or creates) partition `partition` of `record` in `data_dir`
    /// and its Raft group (not yet driven: the caller runs it).
    pub(crate) fn open(
        record: &TopicRecord,
        partition: u32,
        data_dir: &Path,
        me: u64,
        replicas: Vec<u64>,
    ) -> Result<Rc<Partition>> {
        let group = RaftGroup::open(
            record.group_id(partition),
            RaftGroupKind::Partition {
                topic: record.name.clone(),
                partition,
            },
            record.partition_dir(data_dir, partition),
            log_config(record),
            me,
            replicas,
            false,
        )?;
        if record.sync_interval_ms.is_some() {
            let flusher = group.part.clone();
            glommio::spawn_local(async move {
                let e = flusher.flush_loop().await;
                tracing::error!(error = %e, "partition flush loop stopped");
            })
            .detach();
        }
        Ok(Rc::new(Partition {
            topic: record.name.clone(),
            partition,
            group,
        }))
    }

    pub fn leader(&self) -> Option<u64> {
        self.group.leader()
    }

    pub fn role(&self) -> Role {
        self.group.role()
    }

    /// Why this replica stopped (a persistence failure), if it did.
    pub fn stopped_reason(&self) -> Option<String> {
        self.group.failed.borrow().clone()
    }

    /// Appends a producer's batch (checked here: CRC, records, size, the
    /// producer's sequence) and waits for it per `acks`.
    pub async fn produce(
        &self,
        acks: Acks,
        timeout_ms: u32,
        batch: &[u8],
    ) -> Result<ProduceResponse> {
        let g = &self.group;
        // Too large for a segment (or the format's 16 MiB cap): refused as
        // such before anything else, so the client is told the real reason.
        let segment = g.part.log().config().segment_bytes_max as usize;
        if batch.len() > segment.min(wire::batch::BATCH_BYTES_MAX) {
            return Err(Error::BatchTooLarge {
                bytes: batch.len(),
                segment_bytes: segment,
            });
        }
        // The CRC is checked here once (followers check it again when the
        // entry arrives); the structure and every record too.
        let check = RecordBatch::parse(batch).and_then(|b| {
            b.validate_records()?;
            if b.batch_bytes() != batch.len() {
                return Err(WireError::InvalidBatch("bytes after the batch".into()));
            }
            if b.record_count() == 0 {
                return Err(WireError::InvalidBatch("no records".into()));
            }
            if b.is_control() {
                return Err(WireError::InvalidBatch(
                    "control batches are written by brokers only".into(),
                ));
            }
            Ok(BatchId {
                producer_id: b.producer_id(),
                epoch: b.producer_epoch(),
                base_sequence: b.base_sequence(),
                record_count: b.record_count(),
            })
        });
        let id = check.map_err(Error::CorruptBatch)?;
        // Refused before Raft sees it: every replica would fail the same way.
        {
            let log = g.part.log();
            if log.space_full() {
                return Err(Error::DiskFull);
            }
        }
        // Capped: a request holds its connection's slot and budget while
        // it waits.
        let timeout = match timeout_ms {
            0 => PRODUCE_TIMEOUT_DEFAULT,
            ms => Duration::from_millis(u64::from(ms)).min(PRODUCE_TIMEOUT_MAX),
        };
        // Check and record the producer's sequence in the same synchronous
        // step as the proposal, so pipelined batches of one producer are
        // judged in the order they enter the log.
        let verdict = g.producers.borrow().check(id);
        let (wait, duplicate) = match verdict {
            Verdict::Reject(why) => return Err(why.into()),
            Verdict::Duplicate { entry } => (self.wait(entry, None, acks, timeout), true),
            Verdict::Append => {
                let (index, term) = g.propose(batch.to_vec())?;
                g.record_producer(id, index);
                (self.wait(index, Some(term), acks, timeout), false)
            }
        };
        let c = wait.await?;
        Ok(ProduceResponse {
            topic: self.topic.clone(),
            partition: self.partition,
            base_offset: c.base_offset,
            last_offset: c.last_offset,
            log_append_time_ms: replica::now_ms(),
            duplicate,
        })
    }

    /// Waits for entry `index` per `acks`, at most `timeout`.
    async fn wait(
        &self,
        index: u64,
        term: Option<u64>,
        acks: Acks,
        timeout: Duration,
    ) -> WaitResult {
        let g = self.group.clone();
        let waited = glommio::timer::timeout(timeout, async move {
            Ok(match acks {
                Acks::Quorum => g.wait_committed(index, term).await,
                Acks::Leader => g.wait_persisted(index, term).await,
            })
        })
        .await;
        waited.unwrap_or(Err(Error::NotAcknowledged { timeout }))
    }

    /// Reads committed batches from `req.offset`, waiting (long poll) up to
    /// the request's wait for `min_bytes`. Answers
    /// [`Error::NotLeaderHere`] if leadership moved while it waited.
    pub async fn fetch(&self, req: FetchRequest) -> Result<FetchResponse> {
        let g = &self.group;
        let max_bytes = (req.max_bytes as usize).clamp(1, FETCH_BYTES_MAX);
        let wait = Duration::from_millis(u64::from(req.max_wait_ms.min(FETCH_WAIT_MS_MAX)));
        let deadline = Instant::now() + wait;
        loop {
            let mut out = Vec::new();
            let (high_watermark, log_start_offset) = {
                let log = g.part.log();
                let hw = g.high_watermark.get();
                let mut at = req.offset;
                // Bounded: each read advances `at` or returns nothing.
                while out.len() < max_bytes && at < hw {
                    let r = log.read(at, max_bytes - out.len(), hw)?;
                    if r.bytes.is_empty() {
                        break;
                    }
                    out.extend_from_slice(r.bytes);
                    at = r.next_offset;
                }
                // An offset past the high watermark but within the log is
                // data not committed yet (a new leader's commit can lag the
                // old one's until its first entry commits): an empty answer
                // that waits, not an error.
                if req.offset > hw.max(log.next_offset()) || req.offset < log.log_start_offset() {
                    return Err(Error::OffsetOutOfRange {
                        offset: req.offset,
                        start: log.log_start_offset(),
                        high_watermark: hw,
                    });
                }
                (hw, log.log_start_offset())
            };
            let now = Instant::now();
            if out.len() >= (req.min_bytes as usize).max(1) || now >= deadline {
                return Ok(FetchResponse {
                    topic: req.topic,
                    partition: req.partition,
                    high_watermark,
                    log_start_offset,
                    batches: out,
                });
            }
            // Long poll: wait for the high watermark to move or the deadline.
            let _ = glommio::timer::timeout(deadline - now, async {
                g.committed.wait().await;
                Ok(())
            })
            .await;
            if g.role() != Role::Leader {
                return Err(Error::NotLeaderHere { leader: g.leader() });
            }
        }
    }

    pub fn list_offsets(&self, req: ListOffsetsRequest) -> Result<ListOffsetsResponse> {
        let log = self.group.part.log();
        let hw = self.group.high_watermark.get();
        let (offset, timestamp_ms) = match req.spec {
            OffsetSpec::Earliest => (Some(log.log_start_offset()), None),
            OffsetSpec::Latest => (Some(hw), None),
            OffsetSpec::Timestamp(ts) => {
                let o = log.offset_for_timestamp(ts)?;
                (o.filter(|&o| o < hw), Some(ts))
            }
        };
        Ok(ListOffsetsResponse {
            topic: req.topic,
            partition: req.partition,
            offset,
            timestamp_ms,
        })
    }

    /// This replica for the telemetry core: role, leader, term, each
    /// replica's progress (on the leader), offsets and size on disk.
    pub fn sample(&self, shard: usize) -> PartitionSample {
        let g = &self.group;
        let log = g.part.log();
        let role = g.role();
        let replicas = if role == Role::Leader {
            let last = g.last_index();
            let mut r: Vec<ReplicaSample> = g
                .replica_progress()
                .into_iter()
                .map(|(broker, m)| ReplicaSample {
                    broker,
                    match_index: Some(m),
                    lag_entries: Some(last.saturating_sub(m)),
                })
                .collect();
            r.sort_by_key(|r| r.broker);
            r
        } else {
            let mut ids = g.replicas().to_vec();
            ids.sort_unstable();
            ids.into_iter()
                .map(|broker| ReplicaSample {
                    broker,
                    match_index: None,
                    lag_entries: None,
                })
                .collect()
        };
        PartitionSample {
            topic: self.topic.clone(),
            partition: self.partition,
            shard,
            role: match role {
                Role::Leader => "leader",
                Role::Follower => "follower",
                Role::PreCandidate => "pre_candidate",
                Role::Candidate => "candidate",
            },
            leader: g.leader(),
            term: g.term(),
            replicas,
            commit_index: g.commit_index(),
            high_watermark: g.high_watermark.get(),
            log_start_offset: log.log_start_offset(),
            log_end_offset: log.next_offset(),
            size_bytes: log.data_bytes(),
            clean_offset: self
                .compaction_dirt()
                .map(|_| self.group.clean_offset.get()),
            // One at a time is shown: the first follower's by id.
            snapshot_transfer: g.archives.sending.borrow().values().next().map(|t| {
                SnapshotTransferSample {
                    to: t.to,
                    bytes_sent: t.bytes_sent.get(),
                    bytes_total: t.bytes_total,
                    bytes_per_sec: t.sample_rate(),
                }
            }),
        }
    }

    /// The replica's state and, on the leader, each replica's progress.
    pub fn status(&self) -> PartitionStatus {
        let g = &self.group;
        let commit = g.commit_index();
        PartitionStatus {
            topic: self.topic.clone(),
            partition: self.partition,
            leader: g.leader(),
            term: g.term(),
            commit_index: commit,
            log_start_offset: g.part.log().log_start_offset(),
            replicas: g
                .replica_progress()
                .into_iter()
                .map(|(broker, match_index)| ReplicaStatus {
                    broker,
                    match_index,
                    lag: commit.saturating_sub(match_index),
                    snapshot: g.archives.sending.borrow().get(&broker).map(|t| {
                        wire::SnapshotProgress {
                            bytes_sent: t.bytes_sent.get(),
                            bytes_total: t.bytes_total,
                            bytes_per_sec: t.bytes_per_sec.get(),
                        }
                    }),
                })
                .collect(),
        }
    }

    /// Saves the producer table, then deletes whole sealed segments past
    /// the topic's retention (bytes, age), never beyond the committed
    /// prefix. The entry before the new log start and its term are saved
    /// first, so Raft can still match a follower's log at the start point.
    /// Returns the segments removed and the retired files for the janitor
    /// (`None` when nothing was cut). `broker` and `shard` name the log
    /// lines.
    pub async fn apply_retention(&self, broker: u64, shard: usize) -> Option<(u64, Retired)> {
        let g = &self.group;
        // The producer table is saved first (when it changed), so a
        // restart reads only the entries since, and none that retention
        // removes is ever needed to rebuild it.
        if let Err(e) = g.save_producers().await {
            tracing::warn!(broker, shard, group = g.id, error = %e, "saving the producer state");
            return None;
        }
        // Not while a snapshot is taken or installed, or a compaction round
        // runs (they hold `maintenance`): the next round of retention cuts.
        let _maintenance = g.maintenance.try_acquire_permit(1).ok()?;
        let bound = g.high_watermark.get();
        // Where retention would cut, and the entry just before the cut
        // with its term: saved before anything is removed.
        let plan = {
            let log = g.part.log();
            log.retention_cut(bound).and_then(|cut| {
                let entry = log.entry_for_offset(cut.checked_sub(1)?)?;
                Some((cut, entry, log.entry_term(entry).ok()?))
            })
        };
        let (cut, entry, term) = plan?;
        // Compaction may have saved a later point already: never lowered
        // (entries below it may have gaps).
        let raise = entry > g.start_prev().0;
        if raise {
            if let Err(e) = g.save_start_prev(entry, term).await {
                tracing::warn!(broker, shard, group = g.id, error = %e, "retention: saving the log-start point");
                return None;
            }
        }
        // `entry-start` (two fsyncs) is written off the shard.
        let plan = g.part.log().plan_move_start(cut);
        if let Some(plan) = plan {
            let (plan, persisted) = glommio::executor()
                .spawn_blocking(move || {
                    let r = plan.persist();
                    (plan, r)
                })
                .await;
            if let Err(e) = g.part.log_mut().start_plan_persisted(plan, persisted) {
                tracing::warn!(broker, shard, group = g.id, error = %e, "retention: writing entry-start");
                return None;
            }
        }
        let mut log = g.part.log_mut();
        let mut segments = 0;
        match log.move_start(cut) {
            Ok(removed) => segments = removed.segments as u64,
            Err(e) => {
                tracing::warn!(broker, shard, group = g.id, error = %e, "retention")
            }
        }
        if raise && log.log_start_offset() == cut {
            g.use_start_prev(entry, term);
        }
        let retired = log.take_retired();
        Some((segments, retired))
    }

    /// How dirty this replica's log is for compaction: (bytes of sealed
    /// segments above the last clean offset, all sealed bytes); `None`
    /// unless the topic is compacted.
    pub fn compaction_dirt(&self) -> Option<(u64, u64)> {
        let log = self.group.part.log();
        matches!(log.config().cleanup, Cleanup::Compact { .. })
            .then(|| log.compaction_dirt(self.group.clean_offset.get()))
    }

    /// One compaction round of this replica's log below its commit point
    /// (leader or follower), if the broker's compaction slot and the
    /// group's maintenance lock are free and there is something new to
    /// compact; `None` if it did not run. The rewriting runs on the
    /// compactor thread; the shard only plans and swaps the segments in,
    /// and reads keep using the old segments until then. Raft's start
    /// point is raised to the last entry of the range first (durably:
    /// batches below it may lose entries, so a follower needing them gets a
    /// snapshot). `broker` and `shard` name the log lines.
    pub(crate) async fn compact(
        &self,
        compactor: &Compactor,
        broker: u64,
        shard: usize,
    ) -> Option<Compacted> {
        let g = &self.group;
        if g.failed.borrow().is_some() {
            // Stopped on a persistence failure: its log is left as it is.
            return None;
        }
        // Held through the round, so a snapshot never links a segment
        // halfway through its swap; taken by one: try at the next check.
        let _maintenance = g.maintenance.try_acquire_permit(1).ok()?;
        let slot = compactor.claim()?;
        let job = match g.part.log().plan_compaction(g.high_watermark.get()) {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(broker, shard, group = g.id, error = %e, "compaction: planning");
                return None;
            }
        };
        if job.reach_offset() <= self.group.clean_offset.get() {
            return None;
        }
        let (entry, term) = job.last_entry()?;
        // Stoppable from here on (a snapshot, an install, a deletion asking
        // meanwhile is not lost).
        let stop = job.stopper();
        *self.group.compaction_stop.borrow_mut() = Some(stop.clone());
        if entry > g.start_prev().0 {
            if let Err(e) = g.save_start_prev(entry, term).await {
                tracing::warn!(broker, shard, group = g.id, error = %e, "compaction: saving the log-start point");
                self.group.compaction_stop.borrow_mut().take();
                return None;
            }
            g.use_start_prev(entry, term);
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) || g.is_stopped() {
            self.group.compaction_stop.borrow_mut().take();
            return None;
        }
        let done = compactor.run(&slot, job).await;
        self.group.compaction_stop.borrow_mut().take();
        let done = done?;
        let mut log = g.part.log_mut();
        let finished = log.finish_compaction(done);
        let retired = log.take_retired();
        drop(log);
        let report = match finished {
            Ok(r) => {
                self.group
                    .clean_offset
                    .set(self.group.clean_offset.get().max(r.clean_offset));
                Some(r)
            }
            Err(e) => {
                tracing::warn!(broker, shard, group = g.id, error = %e, "compaction");
                None
            }
        };
        Some(Compacted { report, retired })
    }

    /// Asks the running compaction round of this replica, if any, to stop
    /// at its next segment (it still swaps in what it finished; the
    /// `maintenance` permit is free soon after): for work that must not
    /// wait out a long round, such as a snapshot or a deletion.
    pub fn stop_compaction(&self) {
        self.group.stop_compaction();
    }

    /// Stops the replica of a deleted topic and renames its directory to
    /// `*.deleted` (one metadata update, so a restart never mistakes it for
    /// live data); returns the new name, for the janitor to remove.
    pub(crate) fn delete(&self) -> Result<PathBuf> {
        let g = &self.group;
        self.stop_compaction();
        g.stop();
        // Unique: a restart replays the controller log and deletes the
        // same topic again while an older copy may still be being removed.
        let mut gone = g.dir.clone().into_os_string();
        gone.push(format!(".{}{DELETED_SUFFIX}", replica::now_ms()));
        let gone = PathBuf::from(gone);
        std::fs::rename(&g.dir, &gone).map_err(|source| Error::RemoveDir {
            dir: g.dir.clone(),
            source,
        })?;
        g.forget_snapshots();
        Ok(gone)
    }
}

/// The partition log's settings from its topic's.
fn log_config(record: &TopicRecord) -> LogConfig {
    let mut c = LogConfig {
        defer_deletes: true,
        ..LogConfig::default()
    };
    if let Some(b) = record.segment_bytes {
        c.segment_bytes_max = b.clamp(
            u64::from(storage::SEGMENT_BYTES_MIN),
            u64::from(storage::SEGMENT_BYTES_MAX),
        ) as u32;
    }
    if let Some(ms) = record.segment_ms {
        c.segment_age_ms_max = ms;
    }
    c.retention_bytes_max = record.retention_bytes;
    c.retention_age_ms_max = record.retention_ms;
    if let Some(ms) = record.sync_interval_ms {
        c.sync_policy = SyncPolicy::IntervalMs(u64::from(ms.max(1)));
    }
    if record.compact {
        c.cleanup = Cleanup::Compact {
            tombstone_grace_ms: record.tombstone_retention_ms.unwrap_or(86_400_000),
        };
    }
    c
}
