//! Message types for clients and peers, the [`Kind`] registry, and the typed
//! encode/decode entry points.
//!
//! Each message is a plain Rust struct archived with rkyv. A body from the
//! network is always validated (bytecheck) before it is read, then checked
//! field by field by [`Validate`] (names, sizes) before it is handed out.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;

use crate::error::{ErrorCode, Result, WireError};
use crate::frame::{finish_frame, start_frame, Frame, FrameBuf, FrameLimits};
use crate::names::{validate_group_name, validate_topic_name};

#[cfg(test)]
use crate::names::arb;

/// Largest snapshot chunk: 2 MiB, the unit in which a snapshot is streamed.
/// Big enough that per-chunk overhead is negligible, small enough that one
/// chunk never holds a connection for long (about 1 ms on a 20 Gbit/s link).
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 2 * 1024 * 1024;

macro_rules! wire_structs {
    ($(
        $(#[$meta:meta])*
        pub struct $name:ident { $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)? }
    )*) => {$(
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub struct $name { $( $(#[$fmeta])* pub $field: $ty ),* }
    )*};
}

macro_rules! wire_enums {
    ($(
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident $( ( $vty:ty ) )? ),* $(,)? }
    )*) => {$(
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub enum $name { $( $(#[$vmeta])* $variant $( ( $vty ) )? ),* }
    )*};
}

wire_enums! {
    /// When a produce is acknowledged.
    pub enum Acks {
        /// Once the leader has the batch durable.
        Leader,
        /// Once a majority of replicas has it durable (committed). The default.
        Quorum,
    }

    /// What happens to old data of a topic.
    pub enum CleanupPolicy {
        /// Whole sealed segments are deleted by retention (bytes, age).
        Delete,
        /// Key compaction: keep the newest record per key.
        Compact,
    }

    /// When appended bytes are made durable.
    pub enum Durability {
        /// fdatasync before every acknowledgement (group commit). The default.
        EveryBatch,
        /// fdatasync at most every N milliseconds.
        IntervalMs(u32),
    }

    /// Which offset [`ListOffsetsRequest`] asks for.
    pub enum OffsetSpec {
        /// The log start offset.
        Earliest,
        /// The next offset to be written (high watermark for consumers).
        Latest,
        /// The first offset whose batch max timestamp is at or after this (ms).
        Timestamp(i64),
    }
}

wire_structs! {
    /// A client endpoint.
    pub struct Endpoint {
        pub host: String,
        pub port: u16,
    }

    /// A broker and the client endpoint of each of its shards (index = shard).
    pub struct BrokerInfo {
        pub id: u64,
        pub endpoints: Vec<Endpoint>,
    }

    /// Per-topic settings. `None` means the broker default.
    pub struct TopicConfig {
        pub retention_bytes: Option<u64>,
        pub retention_ms: Option<u64>,
        pub segment_bytes: Option<u64>,
        pub segment_ms: Option<u64>,
        pub cleanup: CleanupPolicy,
        pub durability: Durability,
        /// How long tombstones survive compaction.
        pub tombstone_retention_ms: Option<u64>,
    }

    /// Where a partition lives.
    pub struct PartitionMetadata {
        pub partition: u32,
        pub leader: Option<u64>,
        pub leader_term: u64,
        /// The shard that owns the partition on every replica.
        pub shard: u32,
        pub replicas: Vec<u64>,
    }

    pub struct TopicMetadata {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub name: String,
        /// An [`ErrorCode`] as u16 (`0` = none), e.g. UnknownTopicOrPartition.
        pub error: u16,
        pub partitions: Vec<PartitionMetadata>,
    }

    pub struct TopicPartition {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub topic: String,
        pub partition: u32,
    }

    pub struct LeaderHint {
        pub broker: u64,
        pub shard: u32,
        pub endpoint: Endpoint,
    }

    // ---- client API -------------------------------------------------------

    /// Metadata for the named topics, or all of them when `topics` is None.
    pub struct MetadataRequest {
        #[cfg_attr(test, proptest(strategy = "arb::opt_topics()"))]
        pub topics: Option<Vec<String>>,
    }

    pub struct MetadataResponse {
        pub brokers: Vec<BrokerInfo>,
        pub controller: Option<u64>,
        pub topics: Vec<TopicMetadata>,
    }

    pub struct CreateTopicRequest {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub name: String,
        pub partitions: u32,
        pub replication: u16,
        pub config: TopicConfig,
        pub timeout_ms: u32,
    }

    pub struct CreateTopicResponse {
        pub topic: TopicMetadata,
    }

    pub struct DeleteTopicRequest {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub name: String,
        pub timeout_ms: u32,
    }

    pub struct DeleteTopicResponse {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub name: String,
    }

    pub struct DescribeTopicRequest {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub name: String,
    }

    pub struct DescribeTopicResponse {
        pub topic: TopicMetadata,
        pub replication: u16,
        pub config: TopicConfig,
    }

    /// One record batch ([`crate::RecordBatch`]) for one partition.
    pub struct ProduceRequest {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub topic: String,
        pub partition: u32,
        pub acks: Acks,
        pub timeout_ms: u32,
        pub batch: Vec<u8>,
    }

    pub struct ProduceResponse {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub topic: String,
        pub partition: u32,
        pub base_offset: u64,
        pub last_offset: u64,
        pub log_append_time_ms: i64,
        /// The batch was a retry of one already appended (idempotent producer);
        /// the offsets are those of the original append.
        pub duplicate: bool,
    }

    /// Reads committed batches from `offset`, waiting up to `max_wait_ms` for
    /// at least `min_bytes` (long polling).
    pub struct FetchRequest {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub topic: String,
        pub partition: u32,
        pub offset: u64,
        pub max_bytes: u32,
        pub min_bytes: u32,
        pub max_wait_ms: u32,
    }

    pub struct FetchResponse {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub topic: String,
        pub partition: u32,
        /// One past the last committed offset.
        pub high_watermark: u64,
        pub log_start_offset: u64,
        /// Whole record batches, concatenated, exactly as stored.
        pub batches: Vec<u8>,
    }

    pub struct ListOffsetsRequest {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub topic: String,
        pub partition: u32,
        pub spec: OffsetSpec,
    }

    pub struct ListOffsetsResponse {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub topic: String,
        pub partition: u32,
        /// None when no batch matches a timestamp query.
        pub offset: Option<u64>,
        pub timestamp_ms: Option<i64>,
    }

    pub struct JoinGroupRequest {
        #[cfg_attr(test, proptest(strategy = "arb::group()"))]
        pub group: String,
        /// None on first join; the broker assigns one.
        pub member_id: Option<String>,
        pub client_id: String,
        #[cfg_attr(test, proptest(strategy = "arb::topics()"))]
        pub topics: Vec<String>,
        /// Requested lease TTL.
        pub lease_ms: u32,
    }

    pub struct JoinGroupResponse {
        #[cfg_attr(test, proptest(strategy = "arb::group()"))]
        pub group: String,
        pub member_id: String,
        pub generation: u64,
        pub lease_ms: u32,
        pub assignment: Vec<TopicPartition>,
    }

    /// Renews a member's lease.
    pub struct GroupHeartbeatRequest {
        #[cfg_attr(test, proptest(strategy = "arb::group()"))]
        pub group: String,
        pub member_id: String,
        pub generation: u64,
    }

    pub struct GroupHeartbeatResponse {
        pub generation: u64,
        pub lease_ms: u32,
        /// The assignment changed: the member should rejoin.
        pub rebalance: bool,
    }

    pub struct LeaveGroupRequest {
        #[cfg_attr(test, proptest(strategy = "arb::group()"))]
        pub group: String,
        pub member_id: String,
    }

    pub struct LeaveGroupResponse {
        #[cfg_attr(test, proptest(strategy = "arb::group()"))]
        pub group: String,
    }

    pub struct CommittedOffset {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub topic: String,
        pub partition: u32,
        pub offset: u64,
        pub metadata: String,
    }

    /// Commits offsets; fenced by `generation` (only the lease holder may).
    pub struct OffsetCommitRequest {
        #[cfg_attr(test, proptest(strategy = "arb::group()"))]
        pub group: String,
        pub member_id: String,
        pub generation: u64,
        pub offsets: Vec<CommittedOffset>,
    }

    pub struct PartitionResult {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub topic: String,
        pub partition: u32,
        /// An [`ErrorCode`] as u16.
        pub error: u16,
    }

    pub struct OffsetCommitResponse {
        pub results: Vec<PartitionResult>,
    }

    pub struct OffsetFetchRequest {
        #[cfg_attr(test, proptest(strategy = "arb::group()"))]
        pub group: String,
        pub partitions: Vec<TopicPartition>,
    }

    pub struct FetchedOffset {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub topic: String,
        pub partition: u32,
        pub offset: Option<u64>,
        pub metadata: String,
    }

    pub struct OffsetFetchResponse {
        pub offsets: Vec<FetchedOffset>,
    }

    pub struct ClusterStatusRequest {
        pub include_partitions: bool,
    }

    pub struct BrokerStatus {
        pub id: u64,
        pub endpoints: Vec<Endpoint>,
        pub alive: bool,
        pub last_seen_ms_ago: Option<u64>,
    }

    pub struct ReplicaStatus {
        pub broker: u64,
        pub match_index: u64,
        pub lag: u64,
        /// A snapshot the leader is streaming to this replica:
        /// `(bytes sent, bytes total, bytes per second)`.
        pub snapshot: Option<SnapshotProgress>,
    }

    pub struct SnapshotProgress {
        pub bytes_sent: u64,
        pub bytes_total: u64,
        pub bytes_per_sec: u64,
    }

    pub struct PartitionStatus {
        #[cfg_attr(test, proptest(strategy = "arb::topic()"))]
        pub topic: String,
        pub partition: u32,
        pub leader: Option<u64>,
        pub term: u64,
        pub commit_index: u64,
        pub log_start_offset: u64,
        pub replicas: Vec<ReplicaStatus>,
    }

    pub struct ClusterStatusResponse {
        pub controller: Option<u64>,
        pub brokers: Vec<BrokerStatus>,
        pub partitions: Vec<PartitionStatus>,
    }

    /// The answer to any request that failed.
    pub struct ErrorResponse {
        /// An [`ErrorCode`] as u16.
        pub code: u16,
        pub message: String,
        pub leader_hint: Option<LeaderHint>,
    }

    // ---- peers ------------------------------------------------------------

    /// First frame on a peer connection: who is calling, proven with a MAC
    /// over the nonce keyed by the cluster secret.
    pub struct PeerHello {
        pub cluster_id: u64,
        pub node_id: u64,
        pub shard: u32,
        pub nonce: u64,
        pub auth_tag: Vec<u8>,
        /// The caller's client address (`HOST:PORT` of its shard 0), so
        /// peers can send clients to it.
        pub endpoint: String,
        /// The caller's telemetry address (`HOST:PORT` of its `--http`),
        /// for the dashboard; empty when it serves none.
        pub http: String,
    }

    pub struct PeerHelloResponse {
        pub node_id: u64,
        pub shard: u32,
        pub auth_tag: Vec<u8>,
    }

    /// Raft AppendEntries for one group. `entries` holds `entry_count` whole
    /// record batches, concatenated, the same bytes the leader stored.
    pub struct AppendEntriesRequest {
        pub group: u64,
        pub term: u64,
        pub leader: u64,
        pub prev_log_index: u64,
        pub prev_log_term: u64,
        pub leader_commit: u64,
        pub entry_count: u32,
        pub entries: Vec<u8>,
    }

    pub struct AppendEntriesResponse {
        pub group: u64,
        pub term: u64,
        pub from: u64,
        pub success: bool,
        /// On success the last index now matched; on reject, the follower's
        /// last index (for fast back-off).
        pub last_index: u64,
        /// On reject: the conflicting term and the first index the follower
        /// holds of that term (fast back-off), 0 when none.
        pub reject_hint_term: u64,
        pub reject_hint_index: u64,
    }

    pub struct VoteRequest {
        pub group: u64,
        pub term: u64,
        pub candidate: u64,
        pub last_log_index: u64,
        pub last_log_term: u64,
        pub pre_vote: bool,
        /// Sent after TimeoutNow: voters ignore their leader lease.
        pub leadership_transfer: bool,
    }

    pub struct VoteResponse {
        pub group: u64,
        pub term: u64,
        pub from: u64,
        pub granted: bool,
        pub pre_vote: bool,
    }

    pub struct GroupHeartbeat {
        pub group: u64,
        pub term: u64,
        pub commit_index: u64,
    }

    /// The heartbeats of all groups of one shard to one peer, in one message.
    pub struct HeartbeatBatchRequest {
        pub from: u64,
        pub heartbeats: Vec<GroupHeartbeat>,
    }

    pub struct GroupHeartbeatAck {
        pub group: u64,
        pub term: u64,
        pub last_index: u64,
    }

    pub struct HeartbeatBatchResponse {
        pub from: u64,
        pub acks: Vec<GroupHeartbeatAck>,
    }

    /// One chunk of a snapshot archive, resumable by `offset`.
    pub struct InstallSnapshotChunk {
        pub group: u64,
        pub term: u64,
        pub leader: u64,
        pub snapshot_index: u64,
        pub snapshot_term: u64,
        pub offset: u64,
        pub total_bytes: u64,
        pub data: Vec<u8>,
        /// crc32c of `data`.
        pub chunk_crc: u32,
        pub done: bool,
    }

    pub struct InstallSnapshotResponse {
        pub group: u64,
        pub term: u64,
        pub from: u64,
        /// The snapshot this answers (a late answer about an older one is
        /// ignored).
        pub snapshot_index: u64,
        /// The offset the follower wants next (resume point).
        pub next_offset: u64,
        pub done: bool,
    }

    /// Opens a snapshot transfer connection (its own, never a Raft lane):
    /// the follower asks the leader's shard for the archive of `group`
    /// that ends at `snapshot_index`/`snapshot_term`, from `offset`. The
    /// leader answers with [`InstallSnapshotChunk`]s to the end (from 0 if
    /// `archive_id` is not the archive it serves), or an `ErrorResponse`.
    pub struct SnapshotFetchRequest {
        pub group: u64,
        pub from: u64,
        pub snapshot_index: u64,
        pub snapshot_term: u64,
        /// The archive the follower has staged bytes of (0: none).
        pub archive_id: u32,
        pub offset: u64,
    }

    /// Leadership transfer: the receiver campaigns at once.
    pub struct TimeoutNow {
        pub group: u64,
        pub term: u64,
        pub from: u64,
    }
}

/// Field checks run after a body passes rkyv validation.
pub trait Validate {
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

fn check_topics<'a>(names: impl IntoIterator<Item = &'a String>) -> Result<()> {
    names.into_iter().try_for_each(|n| validate_topic_name(n))
}

fn field(field: &'static str, ok: bool, reason: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(WireError::InvalidField {
            field,
            reason: reason(),
        })
    }
}

impl Validate for TopicMetadata {
    fn validate(&self) -> Result<()> {
        validate_topic_name(&self.name)
    }
}
impl Validate for TopicPartition {
    fn validate(&self) -> Result<()> {
        validate_topic_name(&self.topic)
    }
}
impl Validate for MetadataRequest {
    fn validate(&self) -> Result<()> {
        self.topics.iter().try_for_each(check_topics)
    }
}
impl Validate for MetadataResponse {
    fn validate(&self) -> Result<()> {
        self.topics.iter().try_for_each(Validate::validate)
    }
}
impl Validate for CreateTopicRequest {
    fn validate(&self) -> Result<()> {
        validate_topic_name(&self.name)?;
        field("partitions", self.partitions > 0, || {
            "must be at least 1".into()
        })?;
        field("replication", self.replication > 0, || {
            "must be at least 1".into()
        })
    }
}
impl Validate for CreateTopicResponse {
    fn validate(&self) -> Result<()> {
        self.topic.validate()
    }
}
impl Validate for DescribeTopicResponse {
    fn validate(&self) -> Result<()> {
        self.topic.validate()
    }
}
macro_rules! validate_name_field {
    ($check:ident: $($ty:ident . $field:ident),* $(,)?) => {$(
        impl Validate for $ty {
            fn validate(&self) -> Result<()> {
                $check(&self.$field)
            }
        }
    )*};
}
validate_name_field!(validate_topic_name:
    DeleteTopicRequest.name, DeleteTopicResponse.name, DescribeTopicRequest.name,
    ProduceResponse.topic, FetchRequest.topic, FetchResponse.topic,
    ListOffsetsRequest.topic, ListOffsetsResponse.topic,
);
validate_name_field!(validate_group_name:
    JoinGroupResponse.group, GroupHeartbeatRequest.group, LeaveGroupRequest.group,
    LeaveGroupResponse.group,
);
impl Validate for ProduceRequest {
    fn validate(&self) -> Result<()> {
        validate_topic_name(&self.topic)?;
        field("batch", !self.batch.is_empty(), || {
            "must not be empty".into()
        })
    }
}
impl Validate for JoinGroupRequest {
    fn validate(&self) -> Result<()> {
        validate_group_name(&self.group)?;
        check_topics(&self.topics)
    }
}
impl Validate for OffsetCommitRequest {
    fn validate(&self) -> Result<()> {
        validate_group_name(&self.group)?;
        check_topics(self.offsets.iter().map(|o| &o.topic))
    }
}
impl Validate for OffsetCommitResponse {
    fn validate(&self) -> Result<()> {
        check_topics(self.results.iter().map(|r| &r.topic))
    }
}
impl Validate for OffsetFetchRequest {
    fn validate(&self) -> Result<()> {
        validate_group_name(&self.group)?;
        check_topics(self.partitions.iter().map(|p| &p.topic))
    }
}
impl Validate for OffsetFetchResponse {
    fn validate(&self) -> Result<()> {
        check_topics(self.offsets.iter().map(|o| &o.topic))
    }
}
impl Validate for ClusterStatusResponse {
    fn validate(&self) -> Result<()> {
        check_topics(self.partitions.iter().map(|p| &p.topic))
    }
}
impl Validate for InstallSnapshotChunk {
    fn validate(&self) -> Result<()> {
        field("data", self.data.len() <= SNAPSHOT_CHUNK_BYTES_MAX, || {
            format!(
                "{} bytes, the maximum chunk is {SNAPSHOT_CHUNK_BYTES_MAX}",
                self.data.len()
            )
        })?;
        let end = self.offset.checked_add(self.data.len() as u64);
        field(
            "offset",
            end.is_some_and(|end| end <= self.total_bytes),
            || {
                format!(
                    "chunk at {} + {} passes total {}",
                    self.offset,
                    self.data.len(),
                    self.total_bytes
                )
            },
        )?;
        let crc = crc32c::crc32c(&self.data);
        field("chunk_crc", crc == self.chunk_crc, || {
            format!(
                "header says {:#010x}, data gives {crc:#010x}",
                self.chunk_crc
            )
        })
    }
}
macro_rules! no_field_checks {
    ($($ty:ident),* $(,)?) => { $( impl Validate for $ty {} )* };
}
no_field_checks!(
    GroupHeartbeatResponse,
    ClusterStatusRequest,
    ErrorResponse,
    PeerHello,
    PeerHelloResponse,
    AppendEntriesRequest,
    AppendEntriesResponse,
    VoteRequest,
    VoteResponse,
    HeartbeatBatchRequest,
    HeartbeatBatchResponse,
    InstallSnapshotResponse,
    SnapshotFetchRequest,
    TimeoutNow,
);

impl InstallSnapshotChunk {
    /// Sets `chunk_crc` from `data`.
    pub fn seal(mut self) -> Self {
        self.chunk_crc = crc32c::crc32c(&self.data);
        self
    }
}

impl ErrorResponse {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorResponse {
            code: code as u16,
            message: message.into(),
            leader_hint: None,
        }
    }

    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::from_u16(self.code)
    }
}

/// A message that travels in a frame of its own kind.
pub trait WireMessage: Validate + Sized + rkyv::Archive {
    const KIND: Kind;
}

type Serializer<'a> = HighSerializer<FrameBuf, ArenaHandle<'a>, rancor::Error>;

/// Encodes `msg` as a complete frame in a new buffer.
pub fn encode<M>(msg: &M, correlation_id: u64, limits: FrameLimits) -> Result<FrameBuf>
where
    M: WireMessage + for<'a> rkyv::Serialize<Serializer<'a>>,
{
    encode_in(msg, correlation_id, limits, FrameBuf::new())
}

/// Encodes `msg` as a complete frame, reusing `buf`'s allocation.
pub fn encode_in<M>(
    msg: &M,
    correlation_id: u64,
    limits: FrameLimits,
    buf: FrameBuf,
) -> Result<FrameBuf>
where
    M: WireMessage + for<'a> rkyv::Serialize<Serializer<'a>>,
{
    let buf = start_frame(M::KIND, correlation_id, buf);
    let buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(msg, buf).map_err(|e| {
        WireError::Encode {
            kind: M::KIND.name(),
            reason: e.to_string(),
        }
    })?;
    finish_frame(M::KIND.name(), buf, limits)
}

/// Validates a body in place and returns the archived (zero-copy) view.
///
/// This checks structure only (bounds, tags, UTF-8); [`decode_body`] also runs
/// the field checks of [`Validate`]. `body` must be 8-byte aligned, as the body
/// of a [`Frame`] is.
pub fn access_body<M>(body: &[u8]) -> Result<&M::Archived>
where
    M: WireMessage,
    M::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    rkyv::access::<M::Archived, rancor::Error>(body).map_err(|e| WireError::InvalidBody {
        kind: M::KIND.name(),
        reason: e.to_string(),
    })
}

/// Validates and deserializes a body, then runs its field checks.
pub fn decode_body<M>(body: &[u8]) -> Result<M>
where
    M: WireMessage,
    M::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<M, HighDeserializer<rancor::Error>>,
{
    let archived = access_body::<M>(body)?;
    let msg =
        rkyv::deserialize::<M, rancor::Error>(archived).map_err(|e| WireError::InvalidBody {
            kind: M::KIND.name(),
            reason: e.to_string(),
        })?;
    msg.validate()?;
    Ok(msg)
}

impl Frame {
    fn expect_kind<M: WireMessage>(&self) -> Result<()> {
        if self.header.kind == M::KIND {
            Ok(())
        } else {
            Err(WireError::KindMismatch {
                expected: M::KIND.name(),
                actual: self.header.kind.name(),
            })
        }
    }

    /// The archived view of this frame's body as `M` (structure validated).
    pub fn access<M>(&self) -> Result<&M::Archived>
    where
        M: WireMessage,
        M::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
    {
        self.expect_kind::<M>()?;
        access_body::<M>(&self.body)
    }

    /// This frame's body decoded as `M` (structure and fields validated).
    pub fn decode<M>(&self) -> Result<M>
    where
        M: WireMessage,
        M::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<M, HighDeserializer<rancor::Error>>,
    {
        self.expect_kind::<M>()?;
        decode_body::<M>(&self.body)
    }

    /// This frame's body decoded as whatever its kind says.
    pub fn message(&self) -> Result<Message> {
        Message::decode_body(self.header.kind, &self.body)
    }
}

macro_rules! kinds {
    ($( $code:literal => $name:ident, )*) => {
        /// Every message kind, with its stable wire code. Never renumber a
        /// kind; add new ones.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Kind { $( $name = $code, )* }

        impl Kind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [Kind] = &[$(Kind::$name),*];

            pub fn from_u16(code: u16) -> Option<Kind> {
                match code { $( $code => Some(Kind::$name), )* _ => None }
            }

            pub fn name(self) -> &'static str {
                match self { $( Kind::$name => stringify!($name), )* }
            }
        }

        $( impl WireMessage for $name { const KIND: Kind = Kind::$name; } )*

        /// Any message, for code that dispatches on the kind.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub enum Message { $( $name($name), )* }

        impl Message {
            pub fn kind(&self) -> Kind {
                match self { $( Message::$name(_) => Kind::$name, )* }
            }

            /// Encodes as a complete frame.
            pub fn encode(&self, correlation_id: u64, limits: FrameLimits) -> Result<FrameBuf> {
                match self { $( Message::$name(m) => encode(m, correlation_id, limits), )* }
            }

            /// Decodes a body of the given kind.
            pub fn decode_body(kind: Kind, body: &[u8]) -> Result<Message> {
                match kind { $( Kind::$name => decode_body::<$name>(body).map(Message::$name), )* }
            }
        }

        $( impl From<$name> for Message {
            fn from(m: $name) -> Message { Message::$name(m) }
        } )*
    };
}

kinds! {
    0x0001 => MetadataRequest,
    0x0002 => MetadataResponse,
    0x0003 => CreateTopicRequest,
    0x0004 => CreateTopicResponse,
    0x0005 => DeleteTopicRequest,
    0x0006 => DeleteTopicResponse,
    0x0007 => DescribeTopicRequest,
    0x0008 => DescribeTopicResponse,
    0x0009 => ProduceRequest,
    0x000A => ProduceResponse,
    0x000B => FetchRequest,
    0x000C => FetchResponse,
    0x000D => ListOffsetsRequest,
    0x000E => ListOffsetsResponse,
    0x0010 => JoinGroupRequest,
    0x0011 => JoinGroupResponse,
    0x0012 => GroupHeartbeatRequest,
    0x0013 => GroupHeartbeatResponse,
    0x0014 => LeaveGroupRequest,
    0x0015 => LeaveGroupResponse,
    0x0016 => OffsetCommitRequest,
    0x0017 => OffsetCommitResponse,
    0x0018 => OffsetFetchRequest,
    0x0019 => OffsetFetchResponse,
    0x001A => ClusterStatusRequest,
    0x001B => ClusterStatusResponse,
    0x00FF => ErrorResponse,
    0x0101 => PeerHello,
    0x0102 => PeerHelloResponse,
    0x0103 => AppendEntriesRequest,
    0x0104 => AppendEntriesResponse,
    0x0105 => VoteRequest,
    0x0106 => VoteResponse,
    0x0107 => HeartbeatBatchRequest,
    0x0108 => HeartbeatBatchResponse,
    0x0109 => InstallSnapshotChunk,
    0x010A => InstallSnapshotResponse,
    0x010B => TimeoutNow,
    0x010C => SnapshotFetchRequest,
}
