//! Regression (found by review): the follower's fetch loop (broker/src/snapshot/sink.rs)
//! claims "every chunk moves the staged offset forward or ends the fetch",
//! relying on the installer. A zero-length chunk is accepted and moves
//! nothing (and costs an fdatasync once a file is open), so a buggy or
//! hostile sender can keep a fetch — and the group's staging lock — busy
//! forever without ever hitting the idle timeout.

use storage::SnapshotInstaller;

#[test]
fn a_zero_length_chunk_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let part = tmp.path().join("p");
    std::fs::create_dir(&part).unwrap();
    let mut inst = SnapshotInstaller::new(&part).unwrap();
    for _ in 0..1000 {
        let r = inst.write_chunk(inst.next_offset(), &[], crc32c::crc32c(&[]));
        assert!(r.is_err(), "an empty chunk was taken without progress");
    }
}
