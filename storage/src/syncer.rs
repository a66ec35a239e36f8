//! The seam through which every sync round makes bytes durable.
//!
//! A sync round ([`crate::Log::begin_sync`] .. [`crate::Log::finish_sync`])
//! lists files to `fdatasync` and maybe the directory to `fsync`; whoever
//! runs the round issues each call through a [`Syncer`]. Production uses the
//! operating system: [`OsSyncer`] for [`crate::Log::sync_now`], io_uring in
//! [`crate::shard::Partition`] (when [`crate::LogConfig::syncer`] is `None`,
//! the default). A test can put its own `Syncer` in the config to model the
//! page cache, so that a simulated power cut keeps exactly what went through
//! the seam instead of what the log believes it synced.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::log::{SyncFile, SyncJob};

/// Makes one file's data, or one directory's entries, durable.
pub trait Syncer: fmt::Debug {
    /// `fdatasync(2)` of `file`: every byte written to it so far survives a
    /// power cut once this returns `Ok`.
    fn fdatasync(&self, file: &SyncFile) -> io::Result<()>;

    /// `fsync(2)` of the directory `dir`: its entries (files created,
    /// renamed or removed) survive a power cut once this returns `Ok`.
    fn fsync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The operating system's blocking calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsSyncer;

impl Syncer for OsSyncer {
    fn fdatasync(&self, file: &SyncFile) -> io::Result<()> {
        // SAFETY: the fd is owned by the Rc<File>, alive for this call.
        if unsafe { libc::fdatasync(file.file.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn fsync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// Runs the syncs of one round through `syncer`: every file, then the
/// directory. Stops at the first error.
pub fn run_round<S: Syncer + ?Sized>(job: &SyncJob, syncer: &S) -> io::Result<()> {
    for file in &job.files {
        syncer.fdatasync(file)?;
    }
    if let Some(dir) = &job.dir {
        syncer.fsync_dir(dir)?;
    }
    Ok(())
}
