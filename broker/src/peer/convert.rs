//! Raft messages to and from wire messages: appends carry the leader's
//! stored record batches, heartbeats travel coalesced per peer, and
//! everything a peer sends is checked (it speaks only for itself, entry
//! counts are bounded by the bytes present) before Raft sees it.

use raft::{Entry, MessageBody, NodeId};
use wire::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotChunk, InstallSnapshotResponse,
    Message, TimeoutNow, VoteRequest, VoteResponse,
};

use crate::replica;

/// A Raft message as a wire message (`None` for heartbeats, which
/// `Outbox::send` coalesces). A snapshot's Raft-level payload is a small
/// ticket (see `crate::snapshot`): the archive itself streams on a
/// connection of its own.
pub fn to_wire(m: raft::Message) -> Option<Message> {
    let group = m.group_id;
    Some(match m.body {
        MessageBody::PreVote {
            last_index,
            last_term,
        } => VoteRequest {
            group,
            term: m.term,
            candidate: m.from,
            last_log_index: last_index,
            last_log_term: last_term,
            pre_vote: true,
            leadership_transfer: false,
        }
        .into(),
        MessageBody::Vote {
            last_index,
            last_term,
            transfer,
        } => VoteRequest {
            group,
            term: m.term,
            candidate: m.from,
            last_log_index: last_index,
            last_log_term: last_term,
            pre_vote: false,
            leadership_transfer: transfer,
        }
        .into(),
        MessageBody::PreVoteResponse { reject } | MessageBody::VoteResponse { reject } => {
            VoteResponse {
                group,
                term: m.term,
                from: m.from,
                granted: !reject,
                pre_vote: matches!(m.body, MessageBody::PreVoteResponse { .. }),
            }
            .into()
        }
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => {
            let mut bytes =
                Vec::with_capacity(entries.iter().map(|e| e.size_bytes()).sum::<u64>() as usize);
            for e in &entries {
                let at = bytes.len();
                bytes.extend_from_slice(&replica::entry_batch(&e.payload));
                wire::set_term(&mut bytes[at..], e.term);
                wire::set_entry_index(&mut bytes[at..], e.index);
            }
            AppendEntriesRequest {
                group,
                term: m.term,
                leader: m.from,
                prev_log_index: prev_index,
                prev_log_term: prev_term,
                leader_commit: commit,
                entry_count: entries.len() as u32,
                entries: bytes,
            }
            .into()
        }
        MessageBody::AppendResponse {
            reject,
            index,
            hint_index,
            hint_term,
        } => AppendEntriesResponse {
            group,
            term: m.term,
            from: m.from,
            success: !reject,
            last_index: index,
            reject_hint_term: hint_term,
            reject_hint_index: hint_index,
        }
        .into(),
        MessageBody::TimeoutNow => TimeoutNow {
            group,
            term: m.term,
            from: m.from,
        }
        .into(),
        MessageBody::InstallSnapshot {
            meta,
            offset,
            data,
            done,
        } => InstallSnapshotChunk {
            group,
            term: m.term,
            leader: m.from,
            snapshot_index: meta.index,
            snapshot_term: meta.term,
            offset,
            total_bytes: meta.size_bytes,
            data,
            chunk_crc: 0,
            done,
        }
        .seal()
        .into(),
        MessageBody::SnapshotResponse {
            snapshot_index,
            next_offset,
            done,
        } => InstallSnapshotResponse {
            group,
            term: m.term,
            from: m.from,
            snapshot_index,
            next_offset,
            done,
        }
        .into(),
        // Coalesced by `Outbox::send`.
        MessageBody::Heartbeat { .. } | MessageBody::HeartbeatResponse => return None,
    })
}

/// Coalesced heartbeats (or their answers) as one Raft message per group.
fn beat_messages(
    from: NodeId,
    to: NodeId,
    beats: impl Iterator<Item = raft::Beat>,
) -> Vec<raft::Message> {
    raft::HeartbeatBatch {
        from,
        to,
        beats: beats.collect(),
    }
    .into_messages()
    .collect()
}

/// A wire message from peer `from` as Raft messages to `to` (us). Checks
/// that the sender speaks for itself and that entries are well formed.
pub fn from_wire(msg: Message, from: NodeId, to: NodeId) -> Result<Vec<raft::Message>, String> {
    let one = |group, term, body| {
        Ok(vec![raft::Message {
            group_id: group,
            from,
            to,
            term,
            body,
        }])
    };
    let claims = |who: u64| {
        if who == from {
            Ok(())
        } else {
            Err(format!("peer {from} sent a message as node {who}"))
        }
    };
    match msg {
        Message::VoteRequest(v) => {
            claims(v.candidate)?;
            let body = if v.pre_vote {
                MessageBody::PreVote {
                    last_index: v.last_log_index,
                    last_term: v.last_log_term,
                }
            } else {
                MessageBody::Vote {
                    last_index: v.last_log_index,
                    last_term: v.last_log_term,
                    transfer: v.leadership_transfer,
                }
            };
            one(v.group, v.term, body)
        }
        Message::VoteResponse(v) => {
            claims(v.from)?;
            let body = if v.pre_vote {
                MessageBody::PreVoteResponse { reject: !v.granted }
            } else {
                MessageBody::VoteResponse { reject: !v.granted }
            };
            one(v.group, v.term, body)
        }
        Message::AppendEntriesRequest(a) => {
            claims(a.leader)?;
            // The count is the sender's claim: bound it by the bytes present
            // (each entry is at least one batch header) before allocating.
            let entries_max = a.entries.len() / wire::BATCH_HEADER_BYTES;
            let mut entries = Vec::with_capacity((a.entry_count as usize).min(entries_max));
            for (k, batch) in wire::batches(&a.entries).enumerate() {
                let batch = batch.map_err(|e| format!("append entry {k}: {e}"))?;
                let index = a.prev_log_index + 1 + k as u64;
                if batch.entry_index() != index {
                    return Err(format!(
                        "append entry {k} claims index {}, expected {index}",
                        batch.entry_index()
                    ));
                }
                let entry: Entry = replica::decode_entry(index, batch.as_bytes())?;
                entries.push(entry);
            }
            if entries.len() != a.entry_count as usize {
                return Err(format!(
                    "append says {} entries, holds {}",
                    a.entry_count,
                    entries.len()
                ));
            }
            one(
                a.group,
                a.term,
                MessageBody::Append {
                    prev_index: a.prev_log_index,
                    prev_term: a.prev_log_term,
                    entries,
                    commit: a.leader_commit,
                },
            )
        }
        Message::AppendEntriesResponse(r) => {
            claims(r.from)?;
            one(
                r.group,
                r.term,
                MessageBody::AppendResponse {
                    reject: !r.success,
                    index: r.last_index,
                    hint_index: r.reject_hint_index,
                    hint_term: r.reject_hint_term,
                },
            )
        }
        Message::HeartbeatBatchRequest(h) => {
            claims(h.from)?;
            let beats = h.heartbeats.iter().map(|b| raft::Beat {
                group_id: b.group,
                term: b.term,
                commit: b.commit_index,
                response: false,
            });
            Ok(beat_messages(from, to, beats))
        }
        Message::HeartbeatBatchResponse(h) => {
            claims(h.from)?;
            let beats = h.acks.iter().map(|b| raft::Beat {
                group_id: b.group,
                term: b.term,
                commit: 0,
                response: true,
            });
            Ok(beat_messages(from, to, beats))
        }
        Message::TimeoutNow(t) => {
            claims(t.from)?;
            one(t.group, t.term, MessageBody::TimeoutNow)
        }
        // The membership is the receiving group's own (partition groups do
        // not change theirs): `RaftGroup::step` fills it in.
        Message::InstallSnapshotChunk(c) => {
            claims(c.leader)?;
            one(
                c.group,
                c.term,
                MessageBody::InstallSnapshot {
                    meta: raft::SnapshotMeta {
                        index: c.snapshot_index,
                        term: c.snapshot_term,
                        membership: raft::Membership::default(),
                        size_bytes: c.total_bytes,
                    },
                    offset: c.offset,
                    data: c.data,
                    done: c.done,
                },
            )
        }
        Message::InstallSnapshotResponse(r) => {
            claims(r.from)?;
            one(
                r.group,
                r.term,
                MessageBody::SnapshotResponse {
                    snapshot_index: r.snapshot_index,
                    next_offset: r.next_offset,
                    done: r.done,
                },
            )
        }
        other => Err(format!("{} is not a Raft message", other.kind().name())),
    }
}
