//! DRMQ Raft: a pure, deterministic Raft state machine (see issue "raft").
