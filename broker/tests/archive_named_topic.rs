//! Snapshot archives once lived beside the partitions as
//! `<partition>.archive-<index>`, and a start removed every entry of
//! `partitions/` whose name contained ".archive-": topic names may contain
//! '.' and '-', so a live partition of a topic such as "audit.archive-v2"
//! was removed on every restart. Archives now live in `snapshots/`.

use std::process::Output;

mod common;
use common::Broker;

fn lines(o: &Output) -> usize {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().count()
}

#[test]
fn a_topic_whose_name_contains_archive_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start(&data);
    broker.create_topic("audit.archive-v2", 1);
    let input: String = (1..=50).map(|i| format!("value-{i}\n")).collect();
    assert_eq!(
        lines(&broker.cli(&["produce", "--topic", "audit.archive-v2"], Some(&input))),
        50
    );
    drop(broker); // kill -9
    let broker = Broker::start(&data);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let got = broker.cli(
        &[
            "consume",
            "--topic",
            "audit.archive-v2",
            "--from",
            "earliest",
            "--idle-timeout-ms",
            "1500",
        ],
        None,
    );
    let n = if got.status.success() { lines(&got) } else { 0 };
    let on_disk: Vec<String> = std::fs::read_dir(data.join("partitions"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        n,
        50,
        "acknowledged messages lost after a restart; partitions/: {on_disk:?}; stderr: {}",
        String::from_utf8_lossy(&got.stderr)
    );
}
