//! Frames: the length-prefixed envelope around every message.
//!
//! Layout (little-endian, 24-byte header, then the body):
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! |      0 |    4 | `frame_bytes`: length of the whole frame, header included    |
//! |      4 |    4 | crc32c over bytes `[0, 4)` and `[8, frame_bytes)`            |
//! |      8 |    1 | protocol version ([`PROTOCOL_VERSION`])                      |
//! |      9 |    1 | flags (no bit is defined yet; sent as 0, ignored on receipt) |
//! |     10 |    2 | message kind ([`crate::Kind`])                               |
//! |     12 |    4 | reserved, must be 0                                          |
//! |     16 |    8 | correlation id (a response carries its request's id)         |
//! |     24 |    … | body: the rkyv archive of the message                        |
//!
//! The body starts at offset 24, a multiple of 8, which is the largest
//! alignment any message type needs: an encoded frame is one aligned buffer
//! whose body can be validated in place.
//!
//! Decoding is incremental: [`parse_frame`] answers [`Parsed::Incomplete`]
//! (a normal result, not an error) until a whole frame is buffered, and
//! [`FrameDecoder`] does the buffering for a byte stream. A length field above
//! the limit is an error as soon as its 4 bytes arrive, so a peer can never make
//! the decoder buffer more than [`FrameLimits::frame_bytes_max`].

use crate::error::{Result, WireError};
use crate::messages::Kind;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Size of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 24;
/// Default maximum frame size: a 2 MiB snapshot chunk
/// ([`crate::SNAPSHOT_CHUNK_BYTES_MAX`]) plus its message fields and header fits
/// with room to spare, and so does a 2 MiB produce batch.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 4 * 1024 * 1024;
/// Hard ceiling for a configured maximum: 256 MiB keeps one connection's
/// buffer far below memory while allowing very large batches.
pub const FRAME_BYTES_MAX_CEILING: u32 = 256 * 1024 * 1024;

/// Buffer type of an encoded frame or an owned body: aligned so that rkyv
/// archives inside it can be validated and read in place.
pub type FrameBuf = rkyv::util::AlignedVec<16>;

/// Size limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest frame accepted, header included.
    pub frame_bytes_max: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
        }
    }
}

impl FrameLimits {
    /// Limits with the given maximum, which must lie in
    /// `[FRAME_HEADER_BYTES + 1, FRAME_BYTES_MAX_CEILING]`.
    pub fn new(frame_bytes_max: u32) -> Result<Self> {
        if (frame_bytes_max as usize) <= FRAME_HEADER_BYTES
            || frame_bytes_max > FRAME_BYTES_MAX_CEILING
        {
            return Err(WireError::InvalidField {
                field: "frame_bytes_max",
                reason: format!(
                    "{frame_bytes_max} is outside ({FRAME_HEADER_BYTES}, {FRAME_BYTES_MAX_CEILING}]"
                ),
            });
        }
        Ok(FrameLimits { frame_bytes_max })
    }
}

/// The decoded fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub frame_bytes: u32,
    pub version: u8,
    pub flags: u8,
    pub kind: Kind,
    pub correlation_id: u64,
}

/// A whole frame borrowed from the caller's buffer, CRC already checked.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    pub header: FrameHeader,
    pub body: &'a [u8],
}

/// A whole frame with its body in an aligned buffer of its own.
#[derive(Debug, Clone)]
pub struct Frame {
    pub header: FrameHeader,
    pub body: FrameBuf,
}

impl FrameRef<'_> {
    /// Copies the body into an aligned buffer.
    pub fn to_frame(&self) -> Frame {
        let mut body = FrameBuf::with_capacity(self.body.len());
        body.extend_from_slice(self.body);
        Frame {
            header: self.header,
            body,
        }
    }
}

/// Result of [`parse_frame`].
#[derive(Debug)]
pub enum Parsed<'a> {
    /// Not enough bytes yet; at least `needed` more are required.
    Incomplete { needed: usize },
    /// One whole frame, which used the first `consumed` bytes of the input.
    Frame {
        frame: FrameRef<'a>,
        consumed: usize,
    },
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// crc32c over the length field and everything after the crc field.
pub(crate) fn frame_crc(frame: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&frame[0..4]), &frame[8..])
}

/// Parses one frame from the front of `buf`.
///
/// Errors are final for the stream: the caller should close the connection.
pub fn parse_frame(buf: &[u8], limits: FrameLimits) -> Result<Parsed<'_>> {
    if buf.len() < 4 {
        return Ok(Parsed::Incomplete {
            needed: 4 - buf.len(),
        });
    }
    let frame_bytes = read_u32(buf, 0);
    if frame_bytes > limits.frame_bytes_max {
        return Err(WireError::FrameTooLarge {
            length: u64::from(frame_bytes),
            max: limits.frame_bytes_max,
        });
    }
    if (frame_bytes as usize) < FRAME_HEADER_BYTES {
        return Err(WireError::FrameTooShort {
            length: frame_bytes,
            min: FRAME_HEADER_BYTES as u32,
        });
    }
    let frame_len = frame_bytes as usize;
    if buf.len() < frame_len {
        return Ok(Parsed::Incomplete {
            needed: frame_len - buf.len(),
        });
    }
    let frame = &buf[..frame_len];
    let expected = read_u32(frame, 4);
    let actual = frame_crc(frame);
    if expected != actual {
        return Err(WireError::FrameCrcMismatch { expected, actual });
    }
    let version = frame[8];
    if version != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion {
            version,
            supported: PROTOCOL_VERSION,
        });
    }
    let flags = frame[9];
    let kind_raw = u16::from_le_bytes([frame[10], frame[11]]);
    let kind = Kind::from_u16(kind_raw).ok_or(WireError::UnknownKind { kind: kind_raw })?;
    let reserved = read_u32(frame, 12);
    if reserved != 0 {
        return Err(WireError::ReservedNonZero { value: reserved });
    }
    let mut correlation = [0u8; 8];
    correlation.copy_from_slice(&frame[16..24]);
    let header = FrameHeader {
        frame_bytes,
        version,
        flags,
        kind,
        correlation_id: u64::from_le_bytes(correlation),
    };
    Ok(Parsed::Frame {
        frame: FrameRef {
            header,
            body: &frame[FRAME_HEADER_BYTES..],
        },
        consumed: frame_len,
    })
}

/// Starts a frame: returns a buffer holding a header with length and CRC
/// still zero; the body is appended after it and [`finish_frame`] seals it.
pub(crate) fn start_frame(kind: Kind, correlation_id: u64, mut buf: FrameBuf) -> FrameBuf {
    buf.clear();
    buf.extend_from_slice(&[0u8; 8]);
    buf.push(PROTOCOL_VERSION);
    buf.push(0); // flags
    buf.extend_from_slice(&(kind as u16).to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf.extend_from_slice(&correlation_id.to_le_bytes());
    debug_assert_eq!(buf.len(), FRAME_HEADER_BYTES);
    buf
}

/// Writes length and CRC into a frame built by [`start_frame`].
pub(crate) fn finish_frame(
    kind_name: &'static str,
    mut buf: FrameBuf,
    limits: FrameLimits,
) -> Result<FrameBuf> {
    let len = buf.len();
    if len > limits.frame_bytes_max as usize {
        return Err(WireError::Encode {
            kind: kind_name,
            reason: format!(
                "frame of {len} bytes exceeds the maximum of {}",
                limits.frame_bytes_max
            ),
        });
    }
    buf[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    let crc = frame_crc(&buf);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// Buffers a byte stream and yields whole frames.
///
/// Memory is bounded: the buffer never holds more than one maximum-size
/// frame plus one read's worth of the next. After an error the decoder is
/// poisoned and keeps returning that error: a stream that lost framing cannot
/// be resynchronised safely, so the connection must be closed.
#[derive(Debug)]
pub struct FrameDecoder {
    limits: FrameLimits,
    buf: Vec<u8>,
    start: usize,
    poisoned: Option<WireError>,
}

impl FrameDecoder {
    pub fn new(limits: FrameLimits) -> Self {
        FrameDecoder {
            limits,
            buf: Vec::new(),
            start: 0,
            poisoned: None,
        }
    }

    /// Changes the limits for the frames still to come (a peer connection
    /// accepts larger frames once it is authenticated).
    pub fn set_limits(&mut self, limits: FrameLimits) {
        self.limits = limits;
    }

    /// Appends bytes received from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        match parse_frame(&self.buf[self.start..], self.limits) {
            Ok(Parsed::Incomplete { .. }) => Ok(None),
            Ok(Parsed::Frame { frame, consumed }) => {
                let owned = frame.to_frame();
                self.start += consumed;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                Ok(Some(owned))
            }
            Err(err) => {
                self.poisoned = Some(err.clone());
                Err(err)
            }
        }
    }
}
