//! Coalescing heartbeats: a broker hosts thousands of groups, and the leaders
//! among them heartbeat the same few peers every interval. The driver folds all
//! `Heartbeat` / `HeartbeatResponse` messages to one peer into a single
//! [`HeartbeatBatch`] (one network frame) and expands it on the other side.
//! Heartbeats carry no entries, so this never delays data, and data never
//! delays them.

use std::collections::BTreeMap;

use crate::types::{GroupId, Message, MessageBody, NodeId};

/// A batch holds at most this many beats: 4096 x ~25 bytes encoded is ~100
/// KiB, one socket write, well under the wire frame limit; a broker with more
/// groups led towards one peer sends several batches.
pub const BEATS_PER_BATCH_MAX: usize = 4096;

/// One group's heartbeat (or response) inside a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    pub group_id: GroupId,
    pub term: u64,
    /// For a heartbeat: the commit index to pass on. Zero for a response.
    pub commit: u64,
    pub response: bool,
}

/// All heartbeats from one node to another, for many groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatBatch {
    pub from: NodeId,
    pub to: NodeId,
    pub beats: Vec<Beat>,
}

/// Removes every heartbeat and heartbeat response from `messages` (keeping the
/// order of the rest) and returns them batched per (from, to) peer pair.
pub fn coalesce(messages: &mut Vec<Message>) -> Vec<HeartbeatBatch> {
    let mut by_peer: BTreeMap<(NodeId, NodeId), Vec<HeartbeatBatch>> = BTreeMap::new();
    messages.retain(|m| {
        let beat = match m.body {
            MessageBody::Heartbeat { commit } => Beat {
                group_id: m.group_id,
                term: m.term,
                commit,
                response: false,
            },
            MessageBody::HeartbeatResponse => Beat {
                group_id: m.group_id,
                term: m.term,
                commit: 0,
                response: true,
            },
            _ => return true,
        };
        let batches = by_peer.entry((m.from, m.to)).or_default();
        match batches.last_mut() {
            Some(batch) if batch.beats.len() < BEATS_PER_BATCH_MAX => batch.beats.push(beat),
            _ => batches.push(HeartbeatBatch {
                from: m.from,
                to: m.to,
                beats: vec![beat],
            }),
        }
        false
    });
    by_peer.into_values().flatten().collect()
}

impl HeartbeatBatch {
    /// The per-group messages to step into each group's [`crate::Raft`].
    pub fn into_messages(self) -> impl Iterator<Item = Message> {
        let (from, to) = (self.from, self.to);
        self.beats.into_iter().map(move |beat| Message {
            group_id: beat.group_id,
            from,
            to,
            term: beat.term,
            body: if beat.response {
                MessageBody::HeartbeatResponse
            } else {
                MessageBody::Heartbeat {
                    commit: beat.commit,
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(group_id: GroupId, to: NodeId, body: MessageBody) -> Message {
        Message {
            group_id,
            from: 1,
            to,
            term: 3,
            body,
        }
    }

    #[test]
    fn heartbeats_of_many_groups_to_one_peer_become_one_batch() {
        let mut messages = vec![
            msg(10, 2, MessageBody::Heartbeat { commit: 5 }),
            msg(11, 2, MessageBody::Heartbeat { commit: 7 }),
            msg(10, 2, MessageBody::TimeoutNow),
            msg(12, 3, MessageBody::HeartbeatResponse),
        ];
        let batches = coalesce(&mut messages);
        assert_eq!(messages.len(), 1, "non-heartbeat messages stay");
        assert_eq!(messages[0].body, MessageBody::TimeoutNow);
        assert_eq!(batches.len(), 2, "one batch per peer");
        assert_eq!(batches[0].to, 2);
        assert_eq!(batches[0].beats.len(), 2);
        let expanded: Vec<Message> = batches[0].clone().into_messages().collect();
        assert_eq!(
            expanded[1],
            msg(11, 2, MessageBody::Heartbeat { commit: 7 })
        );
        let response: Vec<Message> = batches[1].clone().into_messages().collect();
        assert_eq!(response[0], msg(12, 3, MessageBody::HeartbeatResponse));
    }

    #[test]
    fn a_batch_never_exceeds_its_limit() {
        let mut messages: Vec<Message> = (0..BEATS_PER_BATCH_MAX as u64 + 1)
            .map(|g| msg(g, 2, MessageBody::Heartbeat { commit: 0 }))
            .collect();
        let batches = coalesce(&mut messages);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].beats.len(), BEATS_PER_BATCH_MAX);
        assert_eq!(batches[1].beats.len(), 1);
    }
}
