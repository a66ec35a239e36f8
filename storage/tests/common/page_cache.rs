//! A test double for the [`Syncer`] seam that models the page cache: bytes
//! written to a segment or index file are volatile until that file itself is
//! synced through the seam, and a file's directory entry until the directory
//! is. [`PageCache::power_cut`] then leaves the disk as a power cut would in
//! the worst case: each file exactly as it was at its last sync through the
//! seam, whatever the log believes it synced.
//!
//! Scope: the files sync rounds cover (`*.log`, `*.index`, `*.timeindex`).
//! Other files (`log-start`, `entry-start`, compaction swaps, snapshots) are
//! made durable by their own fsyncs outside the seam and are left alone; a
//! file removed since the last directory sync is not brought back.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use storage::log::SyncFile;
use storage::Syncer;

/// The extensions of the files sync rounds cover.
const MODELLED: [&str; 3] = ["log", "index", "timeindex"];

#[derive(Debug, Default)]
pub struct PageCache {
    state: RefCell<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Each file's content as of its last fdatasync through the seam.
    synced: HashMap<PathBuf, Vec<u8>>,
    /// Each directory's entries as of its last fsync through the seam.
    entries: HashMap<PathBuf, BTreeSet<OsString>>,
    file_syncs: u64,
    dir_syncs: u64,
}

/// What a power cut did to the modelled files.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PowerCut {
    /// Files whose directory entry was never synced: gone.
    pub removed: Vec<PathBuf>,
    /// Files put back to their last synced content (or emptied, never synced),
    /// with the bytes that differed from what the page cache held.
    pub restored: Vec<(PathBuf, u64)>,
}

impl PageCache {
    pub fn new() -> std::rc::Rc<Self> {
        std::rc::Rc::new(Self::default())
    }

    /// fdatasync calls that came through the seam.
    pub fn file_syncs(&self) -> u64 {
        self.state.borrow().file_syncs
    }

    /// Directory fsync calls that came through the seam.
    pub fn dir_syncs(&self) -> u64 {
        self.state.borrow().dir_syncs
    }

    /// Cuts the power under the partition in `dir` (whose log must be
    /// closed): every modelled file goes back to its last synced content;
    /// one never synced is emptied; one whose directory entry was never
    /// synced disappears.
    pub fn power_cut(&self, dir: &Path) -> io::Result<PowerCut> {
        let state = self.state.borrow();
        let empty = BTreeSet::new();
        let entries = state.entries.get(dir).unwrap_or(&empty);
        let mut cut = PowerCut::default();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()?;
        paths.sort();
        for path in paths {
            let modelled = path
                .extension()
                .is_some_and(|e| MODELLED.iter().any(|m| e == *m));
            if !modelled || !path.is_file() {
                continue;
            }
            let name = path.file_name().expect("a file has a name").to_owned();
            if !entries.contains(&name) {
                std::fs::remove_file(&path)?;
                cut.removed.push(path);
                continue;
            }
            let now = std::fs::read(&path)?;
            let synced: &[u8] = state.synced.get(&path).map_or(&[], |v| v.as_slice());
            let differ = now.len().abs_diff(synced.len())
                + now.iter().zip(synced).filter(|(a, b)| a != b).count();
            if differ > 0 {
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(synced.len() as u64)?;
                f.write_all_at(synced, 0)?;
                cut.restored.push((path, differ as u64));
            }
        }
        Ok(cut)
    }
}

impl Syncer for PageCache {
    fn fdatasync(&self, file: &SyncFile) -> io::Result<()> {
        let len = file.file.metadata()?.len();
        let mut content = vec![0; len as usize];
        file.file.read_exact_at(&mut content, 0)?;
        let mut state = self.state.borrow_mut();
        state.synced.insert(file.path.clone(), content);
        state.file_syncs += 1;
        Ok(())
    }

    fn fsync_dir(&self, dir: &Path) -> io::Result<()> {
        let names = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<BTreeSet<_>>>()?;
        let mut state = self.state.borrow_mut();
        state.entries.insert(dir.to_path_buf(), names);
        state.dir_syncs += 1;
        Ok(())
    }
}
