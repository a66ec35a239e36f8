//! Group commit through io_uring, failed-fsync poisoning, interval policy.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::*;
use glommio::LocalExecutorBuilder;
use storage::shard::Partition;
use storage::{Clock, Fault, FaultInjector, FaultPoint, Log, StorageError, SyncPolicy};

#[test]
fn concurrent_appends_share_fdatasyncs_and_all_become_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let ex = LocalExecutorBuilder::default().make().unwrap();
    ex.run(async move {
        let (log, _) = Log::open(&path, small_config()).unwrap();
        let p = Partition::new(log);
        // 32 appenders, 4 appends each, all in flight together.
        let tasks: Vec<_> = (0..32u64)
            .map(|t| {
                let p = p.clone();
                glommio::spawn_local(async move {
                    let mut ends = Vec::new();
                    for i in 0..4u64 {
                        let info = p.append(&batch(t * 10 + i, 1, 100, 0), 1).await.unwrap();
                        assert!(p.log().durable_offset() > info.last_offset);
                        ends.push(info.last_offset);
                    }
                    ends
                })
            })
            .collect();
        let mut n = 0;
        for t in tasks {
            n += t.await.len();
        }
        assert_eq!(n, 128);
        assert_eq!(p.log().durable_offset(), 128);
        let rounds = p.sync_rounds();
        println!("128 appends, {rounds} fdatasync rounds");
        assert!(rounds < 64, "group commit shares rounds: {rounds}");
    });
}

#[test]
fn failed_fdatasync_poisons_until_reopen_and_the_data_is_still_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let faults = FaultInjector::new();
    let cfg = storage::LogConfig {
        faults: faults.clone(),
        ..small_config()
    };
    let ex = LocalExecutorBuilder::default().make().unwrap();
    ex.run(async move {
        let (log, _) = Log::open(&path, cfg).unwrap();
        let p = Partition::new(log);
        p.append(&batch(0, 1, 100, 0), 1).await.unwrap();
        faults.arm(FaultPoint::Fsync, Fault::Eio, 0);
        let e = p.append(&batch(1, 1, 100, 0), 1).await.unwrap_err();
        assert!(
            matches!(
                e,
                StorageError::Io {
                    op: "fdatasync",
                    ..
                }
            ),
            "{e}"
        );
        assert!(!e.is_retriable());
        // Refused from now on, even with the fault gone.
        let e = p.append(&batch(2, 1, 100, 0), 1).await.unwrap_err();
        assert!(matches!(e, StorageError::Poisoned { .. }), "{e}");
        assert_eq!(p.log().durable_offset(), 1);
        // Reads go on.
        assert_eq!(read_all(&p.log()).len(), 2);
    });
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.append(&batch(3, 1, 100, 0), 1).unwrap().base_offset, 2);
    assert_eq!(log.sync_now().unwrap(), 3);
}

#[test]
fn interval_policy_acknowledges_before_sync_and_flushes_on_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let now = Rc::new(Cell::new(1_000i64));
    let cfg = storage::LogConfig {
        sync_policy: SyncPolicy::IntervalMs(50),
        clock: Clock::Manual(now.clone()),
        ..small_config()
    };
    let ex = LocalExecutorBuilder::default().make().unwrap();
    ex.run(async move {
        let (log, _) = Log::open(&path, cfg).unwrap();
        let p = Partition::new(log);
        // Sync once so the interval starts counting from the last round.
        p.sync_round().await.unwrap();
        now.set(1_010);
        for i in 0..10 {
            p.append(&batch(i, 1, 100, 0), 1).await.unwrap();
        }
        assert_eq!(
            p.log().durable_offset(),
            0,
            "appends do not wait under the interval policy"
        );
        assert!(!p.flush_if_due().await.unwrap(), "not yet due");
        now.set(1_100);
        assert!(p.flush_if_due().await.unwrap());
        assert_eq!(p.log().durable_offset(), 10);
        assert!(!p.flush_if_due().await.unwrap(), "nothing left to sync");
    });
}
