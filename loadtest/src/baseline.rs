//! Baselines measured in the same run, so DRMQ's figures can be read as
//! ratios on a noisy machine: raw loopback TCP throughput and a raw
//! write + fdatasync loop, both at the producer's batch size.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Iterations at most per baseline, whatever the duration (a bound, not a
/// target: 1 s of 64 KiB writes on loopback is ~50,000).
const ITERATIONS_MAX: u64 = 10_000_000;
/// The fsync loop rewrites a preallocated region of this size, as the
/// broker's preallocated segments do (64 MiB: no metadata growth).
const FSYNC_FILE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct TcpBaseline {
    pub chunk_bytes: usize,
    pub bytes_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FsyncBaseline {
    pub write_bytes: usize,
    pub syncs_per_s: f64,
    pub bytes_per_s: f64,
    pub fdatasync_us_p50: u64,
    pub fdatasync_us_p99: u64,
}

/// Streams `chunk_bytes` writes over one loopback connection for `duration`.
pub fn tcp(chunk_bytes: usize, duration: Duration) -> Result<TcpBaseline> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        // Bounded: ends at EOF when the writer closes.
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let chunk = vec![0x5au8; chunk_bytes.max(1)];
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < duration && i < ITERATIONS_MAX {
        s.write_all(&chunk)?;
        i += 1;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let total = reader
        .join()
        .map_err(|_| anyhow::anyhow!("tcp baseline reader panicked"))??;
    let secs = start.elapsed().as_secs_f64();
    Ok(TcpBaseline {
        chunk_bytes,
        bytes_per_s: total as f64 / secs,
    })
}

/// Writes `write_bytes` at a time into a preallocated file in `dir`, each
/// followed by fdatasync, for `duration`.
pub fn fsync(dir: &Path, write_bytes: usize, duration: Duration) -> Result<FsyncBaseline> {
    let path = dir.join(format!("fsync-baseline-{}.tmp", std::process::id()));
    let result = fsync_at(&path, write_bytes, duration);
    let _ = std::fs::remove_file(&path);
    result
}

fn fsync_at(path: &Path, write_bytes: usize, duration: Duration) -> Result<FsyncBaseline> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let write_bytes = write_bytes.clamp(1, FSYNC_FILE_BYTES as usize);
    // SAFETY: fallocate on a file descriptor we own, no pointers involved.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, FSYNC_FILE_BYTES as libc::off_t) };
    if rc != 0 {
        file.set_len(FSYNC_FILE_BYTES)?;
    }
    file.sync_all()?;
    let chunk = vec![0xa5u8; write_bytes];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let slots = FSYNC_FILE_BYTES / write_bytes as u64;
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < duration && i < ITERATIONS_MAX {
        let at = (i % slots) * write_bytes as u64;
        file.write_all_at(&chunk, at)?;
        let t = Instant::now();
        file.sync_data()?;
        hist.saturating_record(t.elapsed().as_micros() as u64);
        i += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(FsyncBaseline {
        write_bytes,
        syncs_per_s: i as f64 / secs,
        bytes_per_s: (i * write_bytes as u64) as f64 / secs,
        fdatasync_us_p50: hist.value_at_quantile(0.5),
        fdatasync_us_p99: hist.value_at_quantile(0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_move_bytes_and_count_syncs() {
        let t = tcp(64 * 1024, Duration::from_millis(50)).unwrap();
        assert!(t.bytes_per_s > 0.0);
        let dir = tempfile::tempdir().unwrap();
        let f = fsync(dir.path(), 4096, Duration::from_millis(50)).unwrap();
        assert!(f.syncs_per_s > 0.0 && f.fdatasync_us_p99 >= f.fdatasync_us_p50);
        // The scratch file is gone afterwards.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
