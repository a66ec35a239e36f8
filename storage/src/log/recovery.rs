//! Opening a partition: recovery of its segments and indexes.

use super::*;

impl Log {
    /// Opens (or creates) the partition in `dir`, recovering as needed:
    /// sealed segments with a valid index are trusted (their batches are
    /// CRC-checked lazily when first read); the active segment, and any
    /// segment whose index is missing or damaged, are scanned with CRC
    /// checks; the log is cut at the first bad or torn batch.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<(Log, RecoveryReport)> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| StorageError::io("create dir", &dir, e))?;
        let mut bases = Vec::new();
        let rd = std::fs::read_dir(&dir).map_err(|e| StorageError::io("read dir", &dir, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| StorageError::io("read dir", &dir, e))?;
            let name = ent.file_name();
            let n = name.as_bytes();
            if n.ends_with(SWAP_SUFFIX.as_bytes())
                || n.ends_with(b".tmp")
                || n.ends_with(crate::segment::DELETED_SUFFIX.as_bytes())
            {
                // Leftover of an interrupted compaction or metadata write, or
                // a retired segment whose deletion had not run yet.
                let p = ent.path();
                std::fs::remove_file(&p).map_err(|e| StorageError::io("remove", &p, e))?;
            } else if let Some(b) = parse_base(n) {
                bases.push(b);
            }
        }
        bases.sort_unstable();
        if bases.len() > SEGMENT_COUNT_MAX {
            return Err(StorageError::Config(format!(
                "{} segments in {}, more than {SEGMENT_COUNT_MAX}",
                bases.len(),
                dir.display()
            )));
        }
        let cfg = &config;
        let interval = cfg.index_interval_bytes;
        let mut report = RecoveryReport::default();
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len() + 1);
        let mut i = 0;
        while i < bases.len() {
            let base = bases[i];
            let last = i + 1 == bases.len();
            let expect = segments.last().map(|s| s.next_offset);
            let min_term = segments.last().map_or(0, |s| s.last_term);
            let prev_entry = segments
                .last()
                .and_then(|s| Some((s.last_entry_index?, s.last_batch_end)));
            let cut = |segments_dropped, position, reason: String, path: PathBuf| Truncation {
                path,
                position,
                reason,
                segments_dropped,
            };
            if expect.is_some_and(|e| e != base) {
                let path = segment::paths(&dir, base)[0].clone();
                let reason = format!("segment base {base} does not follow offset {expect:?}");
                report
                    .truncations
                    .push(cut(bases.len() - i, 0, reason, path));
                for &b in &bases[i..] {
                    for p in segment::paths(&dir, b) {
                        let _ = std::fs::remove_file(p);
                    }
                }
                break;
            }
            if !last {
                if let Some(s) = Segment::open_sealed(&dir, base)? {
                    // Its first entry must continue the previous segment's
                    // (else it is scanned, which cuts the log there).
                    let chained = s
                        .first_header()
                        .is_none_or(|h| segment::entry_follows(prev_entry, &h).is_ok());
                    if s.last_term >= min_term && chained {
                        segments.push(s);
                        i += 1;
                        continue;
                    }
                }
            }
            let orig_len = std::fs::metadata(segment::paths(&dir, base)[0].clone())
                .map(|m| m.len())
                .unwrap_or(0);
            let mut s = Segment::open_for_scan(&dir, base, cfg.segment_bytes_max, interval)?;
            let end = s.scan(interval, min_term, prev_entry);
            report.segments_scanned += 1;
            report.bytes_scanned += u64::from(end.valid_bytes);
            let next_base = bases.get(i + 1).copied();
            // Compaction may have removed the records at the end of a sealed
            // segment: its batches then end short of the next segment's
            // base. Such a file ends exactly after its last batch (sealed,
            // shrunk to its data, fsynced before the swap); a crash-damaged
            // one ends in zeros instead. Accept the gap only in the former.
            let compaction_gap = !last
                && end.damage.is_none()
                && orig_len > 0
                && u64::from(end.valid_bytes) == orig_len
                && next_base.is_some_and(|nb| nb > s.next_offset);
            let damaged = end.damage.clone().or_else(|| {
                next_base
                    .filter(|&nb| nb != s.next_offset && !compaction_gap)
                    .map(|nb| {
                        format!(
                            "data ends at offset {} but the next segment starts at {nb}",
                            s.next_offset
                        )
                    })
            });
            if let Some(reason) = damaged {
                let dropped = bases.len() - i - 1;
                tracing::warn!(
                    path = %s.log_path.display(),
                    position = end.valid_bytes,
                    reason = %reason,
                    dropped_segments = dropped,
                    "recovery: truncating the log at a torn or corrupt batch"
                );
                report.truncations.push(cut(
                    dropped,
                    u64::from(end.valid_bytes),
                    reason,
                    s.log_path.clone(),
                ));
                for &b in &bases[i + 1..] {
                    for p in segment::paths(&dir, b) {
                        let _ = std::fs::remove_file(p);
                    }
                }
                s.truncate(s.next_offset, interval, cfg.segment_bytes_max)?;
                segments.push(s);
                break;
            }
            if !last {
                // A sealed segment with a bad or missing index: rebuilt.
                if compaction_gap {
                    if let Some(nb) = next_base {
                        s.next_offset = nb;
                    }
                }
                s.seal(false)?;
                report.indexes_rebuilt += 1;
            } else {
                // Erase anything past the valid data (stale or torn bytes),
                // so later appends can never be followed by old batches.
                let next = s.next_offset;
                s.truncate(next, interval, cfg.segment_bytes_max)?;
            }
            segments.push(s);
            i += 1;
        }
        let log_start_file = read_log_start(&dir);
        if segments.last().is_none_or(|s| s.sealed) {
            let at = segments
                .last()
                .map_or(log_start_file.unwrap_or(0), |s| s.next_offset);
            segments.push(Segment::create(
                &dir,
                at,
                cfg.segment_bytes_max,
                interval,
                false,
            )?);
        }
        report.segments = segments.len();
        let first_base = segments[0].base_offset;
        let next = segments.last().map_or(0, |s| s.next_offset);
        let log_start = log_start_file.unwrap_or(first_base).clamp(first_base, next);
        let empty_next_entry = read_u64_file(&dir, ENTRY_START_FILE).unwrap_or(1).max(1);
        if let Some(b) = &cfg.disk_budget {
            b.take(segments.iter().map(Segment::disk_bytes).sum());
        }
        let active_base = segments.last().map_or(0, |s| s.base_offset);
        let mut log = Log {
            dir,
            config,
            segments,
            log_start_offset: log_start,
            empty_next_entry,
            entry_start_writes: 0,
            blocking_syncs: 0,
            // What recovery found is on disk or in the page cache; only a
            // sync in this process proves the former, so durability restarts
            // at the active segment.
            durable_offset: active_base.max(log_start),
            poisoned: None,
            epoch: 0,
            dir_epoch: 1,
            dir_synced_epoch: 0,
            space_full: false,
            space_unchecked_bytes: SPACE_CHECK_INTERVAL_BYTES,
            last_sync_ms: 0,
            retired: Retired::default(),
        };
        if log_start_file.is_some_and(|v| v != log_start) {
            // The file claimed a start past the recovered end (its data was
            // lost in a crash): store what holds now, or a later append
            // would bring the old value back into range.
            log.write_log_start()?;
        }
        Ok((log, report))
    }
}

fn read_log_start(dir: &Path) -> Option<u64> {
    read_u64_file(dir, LOG_START_FILE)
}

/// A `u64 LE + crc32c` file (`log-start`, `entry-start`); `None` if it is
/// missing or damaged.
fn read_u64_file(dir: &Path, name: &str) -> Option<u64> {
    let b = std::fs::read(dir.join(name)).ok()?;
    if b.len() != 12 {
        return None;
    }
    let v: [u8; 8] = b[..8].try_into().ok()?;
    let crc: [u8; 4] = b[8..].try_into().ok()?;
    (crc32c::crc32c(&v) == u32::from_le_bytes(crc)).then(|| u64::from_le_bytes(v))
}
