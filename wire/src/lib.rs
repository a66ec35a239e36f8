//! DRMQ's binary protocol for clients and peers. No I/O.
//!
//! # Layout
//! | module       | what it holds                                                    |
//! |--------------|------------------------------------------------------------------|
//! | [`frame`]    | the 24-byte frame header, CRC, limits, incremental decoding      |
//! | [`messages`] | every message type, the [`Kind`] registry, typed encode/decode   |
//! | [`batch`]    | the record batch: producer-encoded, stored and fetched unchanged |
//! | [`names`]    | topic and group name rules, checked where names enter            |
//! | [`rules`]    | what clients and brokers agree on: key partitioner, idempotence window |
//! | [`error`]    | [`WireError`] (undecodable bytes) and [`ErrorCode`] (answers)    |
//!
//! A frame's body is an rkyv archive, always validated before it is read. The
//! record batch has its own fixed layout (not rkyv) so that the leader can stamp
//! base offset and term (and each replica the Raft entry index) without re-encoding and the log can store the producer's
//! bytes as they are.
//!
//! ```
//! use wire::{encode, FrameDecoder, FrameLimits, Message, MetadataRequest};
//! let limits = FrameLimits::default();
//! let frame = encode(&MetadataRequest { topics: None }, 7, limits).unwrap();
//! let mut decoder = FrameDecoder::new(limits);
//! decoder.extend(&frame[..10]); // a partial read
//! assert!(decoder.next_frame().unwrap().is_none());
//! decoder.extend(&frame[10..]);
//! let frame = decoder.next_frame().unwrap().unwrap();
//! assert_eq!(frame.header.correlation_id, 7);
//! assert_eq!(frame.message().unwrap(), Message::MetadataRequest(MetadataRequest { topics: None }));
//! ```

pub mod batch;
pub mod error;
pub mod frame;
pub mod messages;
pub mod names;
pub mod rules;

pub use batch::{
    batch_attributes, batches, encode_control_batch, set_base_offset, set_entry_index, set_term,
    BatchError, BatchHeader, Header, NewRecord, Record, RecordBatch, RecordBatchBuilder,
    BATCH_BYTES_MAX, BATCH_HEADER_BYTES,
};
pub use error::{ErrorCode, Result, WireError};
pub use frame::{
    parse_frame, Frame, FrameBuf, FrameDecoder, FrameHeader, FrameLimits, FrameRef, Parsed,
    FRAME_BYTES_MAX_DEFAULT, FRAME_HEADER_BYTES, PROTOCOL_VERSION,
};
pub use messages::*;
pub use names::{validate_group_name, validate_topic_name};
pub use rules::{partition_for_key, IDEMPOTENCE_WINDOW_BATCHES};

#[cfg(test)]
mod proptests;
