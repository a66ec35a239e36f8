//! The controller: Raft group 0 on shard 0, every broker a voter. Topic
//! creations and deletions are proposed there as JSON commands; every
//! broker applies the committed commands in order (a task on shard 0),
//! broadcasting them to its shards, which open or remove their replicas.
//!
//! An admin request forwarded from another shard runs as a task of its own
//! on shard 0, never in shard 0's control loop (which must stay free to
//! apply the change on shard 0 itself), and waits for the apply with a
//! deadline.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalSender};
use glommio::sync::Semaphore;
use raft::{Entry, EntryPayload, Role};
use serde::{Deserialize, Serialize};
use storage::notify::Notify;
use storage::LogConfig;
use wire::{CreateTopicResponse, DeleteTopicResponse, Message};

use crate::cluster::broker_ids;
use crate::error::{chain, Error, Result};
use crate::partition::Partition;
use crate::raft_group::{RaftGroup, RaftGroupKind};
use crate::runtime::Chore;
use crate::shard::{Shard, ShardMsg};
use crate::telemetry::Event;
use crate::topics::{self, shard_for, TopicRecord, PARTITIONS_PER_TOPIC_MAX, TOPICS_MAX};

/// The controller's Raft group.
pub const CONTROLLER_GROUP: u64 = 0;
/// The controller log's segment size, which bounds one command: the
/// largest, a topic of 1,024 partitions with its replica lists, is about
/// 10 KB at RF=3 and 200 KB at RF=64 (1 MiB keeps a wide margin; the
/// controller log holds topic changes only, so the preallocation is cheap).
const CONTROLLER_SEGMENT_BYTES: u32 = 1 << 20;
/// How long topic administration waits for the controller and for the new
/// partitions' first leaders.
const ADMIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(15);
/// Apply failures remembered for admin answers.
const APPLY_ERRORS_KEPT: usize = 1024;

/// A controller command, the payload of a controller entry (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Command {
    /// Creates the topic unless one of that name exists; its id becomes the
    /// entry's index.
    CreateTopic(TopicRecord),
    DeleteTopic {
        name: String,
    },
}

/// The controller's state on a shard (used on shard 0 only).
pub(crate) struct Controller {
    /// Serialises topic administration.
    admin_lock: Semaphore,
    /// The controller's commands wait here to be applied in order.
    commands: RefCell<Option<LocalSender<(u64, Command)>>>,
    /// Index of the last controller entry applied on every shard.
    applied: Cell<u64>,
    applied_notify: Notify,
    /// Controller entries this broker could not fully apply (its replicas
    /// could not be opened: a full disk, say), for the admin answer.
    apply_errors: RefCell<HashMap<u64, Error>>,
    /// The controller's commit index when this process opened it: entries
    /// up to it are replayed at start (old news, not telemetry events).
    replayed_upto: Cell<u64>,
}

impl Controller {
    pub(crate) fn new() -> Controller {
        Controller {
            admin_lock: Semaphore::new(1),
            commands: RefCell::new(None),
            applied: Cell::new(0),
            applied_notify: Notify::default(),
            apply_errors: RefCell::new(HashMap::new()),
            replayed_upto: Cell::new(0),
        }
    }

    /// Queues committed controller entries for the applier (the driver's
    /// hook; commit order).
    pub(crate) fn enqueue(&self, entries: &[Entry]) {
        let commands = self.commands.borrow();
        let Some(tx) = commands.as_ref() else {
            return;
        };
        for e in entries {
            let EntryPayload::Data(batch) = &e.payload else {
                continue;
            };
            let parsed = crate::replica::command_body(batch)
                .ok_or_else(|| "not a command batch".to_string())
                .and_then(|b| serde_json::from_slice::<Command>(b).map_err(|e| e.to_string()));
            match parsed {
                // Unbounded queue: commands are applied in order, and the
                // controller log is small (topic changes only).
                Ok(c) => {
                    let _ = tx.try_send((e.index, c));
                }
                Err(why) => {
                    tracing::error!(entry = e.index, error = %why, "controller entry skipped")
                }
            }
        }
    }
}

fn admin_timeout(timeout_ms: u32) -> Duration {
    match timeout_ms {
        0 => ADMIN_TIMEOUT_DEFAULT,
        ms => Duration::from_millis(u64::from(ms)),
    }
}

impl Shard {
    /// Shard 0: opens the controller group and the task that applies its
    /// committed commands on every shard, in order.
    pub(crate) fn start_controller(self: Rc<Self>) -> Result<()> {
        let voters = broker_ids(&self.config);
        let dir = self.config.data_dir.join("controller");
        let config = LogConfig {
            segment_bytes_max: CONTROLLER_SEGMENT_BYTES,
            ..LogConfig::default()
        };
        let controller = RaftGroup::open(
            CONTROLLER_GROUP,
            RaftGroupKind::Controller,
            dir,
            config,
            self.config.id,
            voters.clone(),
            true,
        )?;
        self.controller.replayed_upto.set(controller.commit_index());
        let (tx, rx) = local_channel::new_unbounded::<(u64, Command)>();
        *self.controller.commands.borrow_mut() = Some(tx);
        let applier = self.clone();
        glommio::spawn_local(async move {
            while let Some((index, command)) = rx.recv().await {
                applier.apply_command(index, command).await;
                applier.controller.applied.set(index);
                applier.controller.applied_notify.notify_all();
            }
        })
        .detach();
        if voters.len() == 1 {
            controller.campaign(); // a lone broker need not wait for a timeout
        }
        self.groups
            .borrow_mut()
            .insert(CONTROLLER_GROUP, controller.clone());
        self.spawn_raft(controller.run(self.outbox.clone(), self.hooks()));
        Ok(())
    }

    fn controller_group(&self) -> Option<Rc<RaftGroup>> {
        self.groups.borrow().get(&CONTROLLER_GROUP).cloned()
    }

    /// Applies one committed controller command on this broker.
    async fn apply_command(&self, index: u64, command: Command) {
        let (name, record) = match command {
            Command::CreateTopic(mut record) => {
                if self.topics.borrow().contains_key(&record.name) {
                    return; // a concurrent creation of the same name won
                }
                record.id = index;
                (record.name.clone(), Some(record))
            }
            Command::DeleteTopic { name } => {
                if !self.topics.borrow().contains_key(&name) {
                    return;
                }
                (name, None)
            }
        };
        // Reported once in the cluster: by the controller's leader, for
        // entries committed since this process started.
        let leading = self
            .controller_group()
            .is_some_and(|c| c.role() == Role::Leader);
        if leading && index > self.controller.replayed_upto.get() {
            self.telemetry.event(match &record {
                Some(r) => Event::TopicCreated {
                    topic: name.clone(),
                    partitions: r.partitions,
                    replication_factor: r.replication,
                },
                None => Event::TopicDeleted {
                    topic: name.clone(),
                },
            });
        }
        if let Err(e) = self.broadcast_topic(&name, record).await {
            tracing::error!(broker = self.config.id, entry = index, topic = %name, error = %chain(&e), "applying a controller entry");
            let mut errors = self.controller.apply_errors.borrow_mut();
            // Only the answer to a recent admin request needs it.
            if errors.len() >= APPLY_ERRORS_KEPT {
                errors.clear();
            }
            errors.insert(index, e);
        }
    }

    /// Opens or removes this shard's replicas of a topic.
    pub(crate) fn apply_topic(
        self: &Rc<Self>,
        name: &str,
        record: Option<TopicRecord>,
    ) -> Result<()> {
        // A previous topic of the same name (deleted, created again) goes first.
        let previous = self.topics.borrow_mut().remove(name);
        if let Some(old) = previous {
            if record.as_ref().is_none_or(|r| r.id != old.id) {
                self.remove_replicas(&old)?;
            } else {
                self.topics.borrow_mut().insert(name.to_owned(), old);
                return Ok(());
            }
        }
        let Some(record) = record else {
            return Ok(());
        };
        let mut failures = Vec::new();
        for p in 0..record.partitions {
            if shard_for(name, p, self.shards) != self.id {
                continue;
            }
            let replicas = record
                .replicas
                .get(p as usize)
                .cloned()
                .unwrap_or_else(|| vec![self.config.id]);
            if !replicas.contains(&self.config.id) {
                continue;
            }
            let opened = Partition::open(
                &record,
                p,
                &self.config.data_dir,
                self.config.id,
                replicas.clone(),
            );
            // One partition that cannot open (a full disk) must not hide
            // the topic or the others: keep going, report at the end.
            let partition = match opened {
                Ok(p) => p,
                Err(e) => {
                    failures.push((p, e));
                    continue;
                }
            };
            let group = partition.group.clone();
            group.set_snapshot_catch_up_bytes(self.config.snapshot_catch_up_mib << 20);
            // The preferred leader (first replica) of a brand-new group
            // campaigns at once, so leaders land where the controller
            // spread them instead of wherever a timer fires first.
            if (replicas[0] == self.config.id && group.term() == 0) || replicas.len() == 1 {
                group.campaign();
            }
            self.spawn_raft(group.clone().run(self.outbox.clone(), self.hooks()));
            self.groups.borrow_mut().insert(group.id, group);
            self.partitions
                .borrow_mut()
                .insert((name.to_owned(), p), partition);
        }
        self.topics.borrow_mut().insert(name.to_owned(), record);
        match failures.is_empty() {
            true => Ok(()),
            false => Err(Error::PartitionsNotOpened(failures)),
        }
    }

    /// Closes a deleted topic's replicas on this shard. Their directories
    /// are renamed to `*.deleted` and removed by the janitor thread: a
    /// large partition takes long to unlink, never on the shard.
    fn remove_replicas(&self, record: &TopicRecord) -> Result<()> {
        for p in 0..record.partitions {
            let removed = self
                .partitions
                .borrow_mut()
                .remove(&(record.name.clone(), p));
            if let Some(partition) = removed {
                self.groups.borrow_mut().remove(&partition.group.id);
                let gone = partition.delete()?;
                if let Err(e) = self.janitor.try_send(Chore::RemoveDir(gone)) {
                    e.into_inner().run();
                }
            }
        }
        Ok(())
    }

    /// Tells every shard (this one included) to apply a topic change.
    async fn broadcast_topic(&self, name: &str, record: Option<TopicRecord>) -> Result<()> {
        let mut waits = Vec::with_capacity(self.shards);
        for inbox in &self.inboxes {
            let (done, wait) = flume::bounded(1);
            inbox
                .send_async(ShardMsg::ApplyTopic {
                    name: name.to_owned(),
                    record: record.clone(),
                    done,
                })
                .await
                .map_err(|_| Error::ShardGone)?;
            waits.push(wait);
        }
        for w in waits {
            w.recv_async().await.map_err(|_| Error::ShardGone)??;
        }
        Ok(())
    }

    /// Proposes a controller command and waits until every shard of this
    /// broker applied it.
    async fn propose_command(&self, command: &Command, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        let Some(controller) = self.controller_group() else {
            return Err(Error::NoControllerHere);
        };
        let body = serde_json::to_vec(command).map_err(Error::Command)?;
        let batch = crate::replica::command_batch(&body);
        // Refused here, never in the log: a command the controller log
        // cannot hold would stop the controller on every broker.
        if batch.len() > CONTROLLER_SEGMENT_BYTES as usize {
            return Err(Error::CommandTooLarge {
                bytes: batch.len(),
                segment_bytes: CONTROLLER_SEGMENT_BYTES,
            });
        }
        let (index, term) = controller.propose(batch).map_err(|e| match e {
            Error::NotLeaderHere { .. } => self.cluster.not_controller(controller.leader()),
            other => other,
        })?;
        let waited = glommio::timer::timeout(timeout, async {
            Ok(controller.wait_committed(index, Some(term)).await)
        })
        .await;
        match waited {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::ControllerTimeout),
        }
        while self.controller.applied.get() < index {
            let left = deadline.saturating_duration_since(Instant::now());
            let woke = glommio::timer::timeout(left, async {
                self.controller.applied_notify.wait().await;
                Ok(())
            })
            .await;
            if woke.is_err() {
                return Err(Error::NotApplied {
                    index,
                    broker: self.config.id,
                });
            }
        }
        if let Some(e) = self.controller.apply_errors.borrow_mut().remove(&index) {
            // DiskFull when the cause is a full disk (`Error::code`).
            return Err(Error::ReplicasNotOpened {
                broker: self.config.id,
                cause: Box::new(e),
            });
        }
        Ok(index)
    }

    /// Topic creation and deletion, on shard 0, through the controller.
    pub(crate) async fn admin(&self, request: Message) -> Message {
        self.admin_request(request)
            .await
            .unwrap_or_else(Message::from)
    }

    async fn admin_request(&self, request: Message) -> Result<Message> {
        let Ok(_permit) = self.controller.admin_lock.acquire_permit(1).await else {
            return Err(Error::ShuttingDown);
        };
        if let Some(c) = self.controller_group() {
            if c.role() != Role::Leader {
                return Err(self.cluster.not_controller(c.leader()));
            }
        }
        match request {
            Message::CreateTopicRequest(req) => {
                if self.topics.borrow().contains_key(&req.name) {
                    return Err(Error::TopicExists { name: req.name });
                }
                if self.topics.borrow().len() >= TOPICS_MAX {
                    return Err(Error::TooManyTopics);
                }
                if req.partitions == 0 || req.partitions > PARTITIONS_PER_TOPIC_MAX {
                    return Err(Error::PartitionCount {
                        partitions: req.partitions,
                    });
                }
                let brokers = broker_ids(&self.config);
                let mut req = req;
                if req.name == wire::rules::OFFSETS_TOPIC {
                    // Internal: created only with its own settings (no
                    // retention: the coordinators replay the whole log),
                    // replicated as the cluster allows, not as asked.
                    if req.partitions != wire::rules::OFFSETS_PARTITIONS
                        || req.config != wire::rules::offsets_topic_config()
                    {
                        return Err(crate::groups::GroupError::InternalTopicConfig.into());
                    }
                    req.replication = wire::rules::OFFSETS_REPLICATION_MAX
                        .min(u16::try_from(brokers.len()).unwrap_or(u16::MAX))
                        .max(1);
                }
                if req.replication == 0 || usize::from(req.replication) > brokers.len() {
                    return Err(Error::Replication {
                        replication: req.replication,
                        brokers: brokers.len(),
                    });
                }
                let mut record = TopicRecord::from_config(
                    req.name.clone(),
                    req.partitions,
                    req.replication,
                    &req.config,
                );
                let seed = topics::fnv1a(req.name.bytes());
                record.replicas =
                    TopicRecord::assign(&brokers, req.partitions, req.replication, seed);
                let timeout = admin_timeout(req.timeout_ms);
                let deadline = Instant::now() + timeout;
                let index = self
                    .propose_command(&Command::CreateTopic(record), timeout)
                    .await?;
                if self.topics.borrow().get(&req.name).map(|t| t.id) != Some(index) {
                    return Err(Error::TopicExists { name: req.name });
                }
                // Wait (bounded) for every partition's first leader, so the
                // topic is usable when the answer arrives.
                while Instant::now() < deadline {
                    let meta = self.topic_metadata(&req.name);
                    if meta.partitions.iter().all(|p| p.leader.is_some()) {
                        break;
                    }
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
                Ok(CreateTopicResponse {
                    topic: self.topic_metadata(&req.name),
                }
                .into())
            }
            Message::DeleteTopicRequest(req) => {
                if !self.topics.borrow().contains_key(&req.name) {
                    return Err(Error::UnknownTopic { name: req.name });
                }
                let command = Command::DeleteTopic {
                    name: req.name.clone(),
                };
                self.propose_command(&command, admin_timeout(req.timeout_ms))
                    .await?;
                Ok(DeleteTopicResponse { name: req.name }.into())
            }
            other => Err(Error::NotAdmin {
                kind: other.kind().name(),
            }),
        }
    }
}
