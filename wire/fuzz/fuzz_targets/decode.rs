//! Fuzzes the whole receive path: stream decoding at any split, body
//! validation for every kind, and record batch parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::{batches, FrameBuf, FrameDecoder, FrameLimits, Kind, Message, RecordBatch};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the mode and where the stream is split.
    let (split, data) = match data.split_first() {
        Some((s, rest)) => (*s as usize, rest),
        None => return,
    };
    if split & 0x80 != 0 {
        // Body mode: a random frame almost never passes the CRC, so feed the
        // body validator directly, as if the CRC had matched.
        if let Some((k, body)) = data.split_first() {
            let kind = Kind::ALL[*k as usize % Kind::ALL.len()];
            let mut aligned = FrameBuf::with_capacity(body.len());
            aligned.extend_from_slice(body);
            if let Ok(msg) = Message::decode_body(kind, &aligned) {
                check_message(&msg);
            }
        }
        return;
    }
    let limits = FrameLimits::new(1 << 20).unwrap();
    let mut decoder = FrameDecoder::new(limits);
    let cut = split.min(data.len());
    decoder.extend(&data[..cut]);
    let mut frames = Vec::new();
    while let Ok(Some(f)) = decoder.next_frame() {
        frames.push(f);
    }
    decoder.extend(&data[cut..]);
    while let Ok(Some(f)) = decoder.next_frame() {
        frames.push(f);
    }
    for frame in frames {
        if let Ok(msg) = frame.message() {
            check_message(&msg);
        }
    }
    // Raw bytes as a record batch, too.
    if let Ok(b) = RecordBatch::parse(data) {
        for r in b.records() {
            let _ = r;
        }
    }
});

fn check_message(msg: &Message) {
    let limits = FrameLimits::default();
    let payload = match &msg {
        Message::ProduceRequest(p) => Some(&p.batch),
        Message::FetchResponse(f) => Some(&f.batches),
        Message::AppendEntriesRequest(a) => Some(&a.entries),
        _ => None,
    };
    if let Some(bytes) = payload {
        for batch in batches(bytes).flatten() {
            let _ = batch.validate_records();
        }
    }
    // Whatever decodes must encode again and decode to the same value.
    if let Ok(bytes) = msg.encode(0, limits) {
        let mut d = FrameDecoder::new(limits);
        d.extend(&bytes);
        let again = d.next_frame().unwrap().unwrap().message().unwrap();
        assert_eq!(&again, msg);
    }
}
