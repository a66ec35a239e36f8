//! Fault injection at named points, so crash recovery is tested
//! deterministically. An injector is shared (`Rc`) between a test and the
//! log; production code carries a disarmed one (one `Cell` read per point).

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::rc::Rc;

/// Where a fault can fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// Copying a batch into the active segment.
    Append,
    /// Sealing the active segment and creating the next one.
    Roll,
    /// Completing an fdatasync.
    Fsync,
    /// Removing a suffix of the log.
    Truncate,
    /// Writing a sealed segment's index files.
    IndexWrite,
    /// Rewriting a sealed segment by key compaction. Hit three times per
    /// rewritten segment: after the `.swap` files are written (not yet
    /// synced), after they are synced (not yet renamed), and after the
    /// renames (directory not yet synced); `skip` picks the stage.
    Compact,
    /// Installing a snapshot archive: hit before and after the directory
    /// exchange.
    Install,
}

impl FaultPoint {
    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::Append => "append",
            FaultPoint::Roll => "roll",
            FaultPoint::Fsync => "fsync",
            FaultPoint::Truncate => "truncate",
            FaultPoint::IndexWrite => "index write",
            FaultPoint::Compact => "compact",
            FaultPoint::Install => "install",
        }
    }
}

impl fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happens when a point fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with EIO.
    Eio,
    /// The operation fails with ENOSPC.
    Enospc,
    /// Only the first half of the bytes reach the file, then EIO.
    TornWrite,
    /// Everything not yet synced is lost (zeroed, as after a power cut), and
    /// the log stops: it must be reopened.
    PowerCut,
}

impl Fault {
    pub(crate) fn io_error(self) -> io::Error {
        match self {
            Fault::Enospc => io::Error::from_raw_os_error(libc::ENOSPC),
            _ => io::Error::from_raw_os_error(libc::EIO),
        }
    }
}

#[derive(Debug, Default)]
struct Armed {
    point: Option<FaultPoint>,
    fault: Option<Fault>,
    /// Hits of `point` to let through before firing.
    skip: u32,
    fired: u32,
}

/// A shared, one-shot fault plan. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct FaultInjector(Rc<RefCell<Armed>>);

impl FaultInjector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires `fault` on the `(skip+1)`-th hit of `point`, once.
    pub fn arm(&self, point: FaultPoint, fault: Fault, skip: u32) {
        *self.0.borrow_mut() = Armed {
            point: Some(point),
            fault: Some(fault),
            skip,
            fired: 0,
        };
    }

    pub fn disarm(&self) {
        let fired = self.0.borrow().fired;
        *self.0.borrow_mut() = Armed {
            fired,
            ..Armed::default()
        };
    }

    /// How many faults have fired.
    pub fn fired(&self) -> u32 {
        self.0.borrow().fired
    }

    /// Called by the log at each point; returns the fault to simulate.
    pub(crate) fn hit(&self, point: FaultPoint) -> Option<Fault> {
        let mut a = self.0.borrow_mut();
        if a.point != Some(point) {
            return None;
        }
        if a.skip > 0 {
            a.skip -= 1;
            return None;
        }
        let f = a.fault.take();
        a.point = None;
        if f.is_some() {
            a.fired += 1;
        }
        f
    }
}
