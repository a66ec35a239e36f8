//! Human-readable tables for `cluster status`, `topic describe` and `topic
//! list`, printed when stdout is a terminal (JSON otherwise, see
//! [`Output`]). Pure functions from a response to a `String`, so the layout
//! is unit-tested without a broker.

use std::fmt::Write;

use wire::{
    ClusterStatusResponse, DescribeTopicResponse, ErrorCode, PartitionStatus, TopicMetadata,
};

/// Spaces between two columns.
const COLUMN_GAP: usize = 2;

/// Left-aligned columns, each as wide as its widest cell, separated by
/// [`COLUMN_GAP`] spaces; no trailing spaces (the last column is not padded).
pub fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(widths.len()) {
            if i > 0 {
                line.push_str(&" ".repeat(COLUMN_GAP));
            }
            line.push_str(cell);
            let pad = widths[i] - cell.chars().count();
            line.push_str(&" ".repeat(pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn ids(v: impl IntoIterator<Item = u64>) -> String {
    v.into_iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Each replica's lag as `BROKER:LAG`, in Raft entries behind the leader's
/// commit index; `-` when the report does not come from a leader (only a
/// leader knows its followers' match indexes).
fn lag(p: &PartitionStatus) -> String {
    if p.leader.is_none() || p.replicas.is_empty() {
        return "-".to_owned();
    }
    p.replicas
        .iter()
        .map(|r| match &r.snapshot {
            // In snapshot catch-up: how far the transfer is.
            Some(t) => format!(
                "{}:{} (snapshot {}/{} MiB, {} MB/s)",
                r.broker,
                r.lag,
                t.bytes_sent >> 20,
                t.bytes_total >> 20,
                t.bytes_per_sec / 1_000_000
            ),
            None => format!("{}:{}", r.broker, r.lag),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `drmq cluster status` as tables: the controller, the brokers, then one
/// line per partition with its leader, term, commit index, replicas and lag.
pub fn cluster_status(s: &ClusterStatusResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "CONTROLLER  {}",
        s.controller.map_or_else(
            || "none (election in progress)".to_owned(),
            |c| c.to_string()
        )
    );
    out.push('\n');
    let brokers: Vec<Vec<String>> = s
        .brokers
        .iter()
        .map(|b| {
            vec![
                b.id.to_string(),
                if b.alive { "yes" } else { "no" }.to_owned(),
                b.last_seen_ms_ago
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms ago")),
                b.endpoints
                    .iter()
                    .map(|e| format!("{}:{}", e.host, e.port))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    out.push_str(&columns(
        &["BROKER", "ALIVE", "LAST SEEN", "ENDPOINTS"],
        &brokers,
    ));
    out.push('\n');
    if s.partitions.is_empty() {
        out.push_str("(no partitions)\n");
        return out;
    }
    let parts: Vec<Vec<String>> = s
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.topic.clone(),
                p.partition.to_string(),
                opt(p.leader),
                p.term.to_string(),
                p.commit_index.to_string(),
                ids(p.replicas.iter().map(|r| r.broker)),
                lag(p),
            ]
        })
        .collect();
    out.push_str(&columns(
        &[
            "TOPIC",
            "PARTITION",
            "LEADER",
            "TERM",
            "COMMIT",
            "REPLICAS",
            "LAG (BROKER:ENTRIES)",
        ],
        &parts,
    ));
    out
}

/// `drmq topic describe` as a table: the topic's settings, then one line per
/// partition. `status` (from `cluster status`, if it answered) adds each
/// replica's lag where a leader reported it.
pub fn describe_topic(r: &DescribeTopicResponse, status: Option<&ClusterStatusResponse>) -> String {
    let t = &r.topic;
    let mut out = String::new();
    let mut settings = vec![
        vec!["TOPIC".to_owned(), t.name.clone()],
        vec!["PARTITIONS".to_owned(), t.partitions.len().to_string()],
        vec!["REPLICATION".to_owned(), r.replication.to_string()],
        vec![
            "CLEANUP".to_owned(),
            format!("{:?}", r.config.cleanup).to_lowercase(),
        ],
        vec!["RETENTION BYTES".to_owned(), opt(r.config.retention_bytes)],
        vec!["RETENTION MS".to_owned(), opt(r.config.retention_ms)],
    ];
    if t.error != 0 {
        settings.push(vec![
            "ERROR".to_owned(),
            ErrorCode::from_u16(t.error).name().to_owned(),
        ]);
    }
    // Settings as "KEY  value" lines: a two-column table without a header.
    let table = columns(&["", ""], &settings);
    out.push_str(table.split_once('\n').map_or("", |(_, rest)| rest));
    out.push('\n');
    let rows: Vec<Vec<String>> = t
        .partitions
        .iter()
        .map(|p| {
            let lag = status
                .and_then(|s| {
                    s.partitions
                        .iter()
                        .find(|q| q.topic == t.name && q.partition == p.partition)
                })
                .map_or_else(|| "-".to_owned(), lag);
            vec![
                p.partition.to_string(),
                opt(p.leader),
                p.leader_term.to_string(),
                p.shard.to_string(),
                ids(p.replicas.iter().copied()),
                lag,
            ]
        })
        .collect();
    out.push_str(&columns(
        &[
            "PARTITION",
            "LEADER",
            "TERM",
            "SHARD",
            "REPLICAS",
            "LAG (BROKER:ENTRIES)",
        ],
        &rows,
    ));
    out
}

/// `drmq topic list` as a table: one line per topic.
pub fn topic_list(topics: &[TopicMetadata]) -> String {
    if topics.is_empty() {
        return "(no topics)\n".to_owned();
    }
    let rows: Vec<Vec<String>> = topics
        .iter()
        .map(|t| {
            let leaderless = t.partitions.iter().filter(|p| p.leader.is_none()).count();
            vec![
                t.name.clone(),
                t.partitions.len().to_string(),
                leaderless.to_string(),
                if t.error == 0 {
                    "-".to_owned()
                } else {
                    ErrorCode::from_u16(t.error).name().to_owned()
                },
            ]
        })
        .collect();
    columns(&["NAME", "PARTITIONS", "NO LEADER", "ERROR"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{
        BrokerStatus, CleanupPolicy, Durability, Endpoint, PartitionMetadata, ReplicaStatus,
        TopicConfig,
    };

    fn status() -> ClusterStatusResponse {
        let broker = |id: u64, alive: bool| BrokerStatus {
            id,
            endpoints: vec![Endpoint {
                host: "127.0.0.1".into(),
                port: 9090 + id as u16,
            }],
            alive,
            last_seen_ms_ago: (!alive).then_some(12_345),
        };
        let replicas = |lags: &[u64]| {
            lags.iter()
                .enumerate()
                .map(|(i, &lag)| ReplicaStatus {
                    broker: i as u64 + 1,
                    match_index: 5120 - lag,
                    lag,
                    snapshot: None,
                })
                .collect()
        };
        ClusterStatusResponse {
            controller: Some(2),
            brokers: vec![broker(1, true), broker(2, true), broker(3, false)],
            partitions: vec![
                PartitionStatus {
                    topic: "orders".into(),
                    partition: 0,
                    leader: Some(1),
                    term: 7,
                    commit_index: 5120,
                    log_start_offset: 0,
                    replicas: replicas(&[0, 2, 320]),
                },
                PartitionStatus {
                    topic: "orders-with-a-long-name".into(),
                    partition: 11,
                    leader: None,
                    term: 12,
                    commit_index: 40,
                    log_start_offset: 0,
                    replicas: replicas(&[40, 40, 40]),
                },
            ],
        }
    }

    /// The byte offset where `word` starts in `line`.
    fn col(line: &str, word: &str) -> usize {
        line.find(word)
            .unwrap_or_else(|| panic!("{word} not in {line:?}"))
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_with_no_trailing_spaces() {
        let t = columns(
            &["A", "BB", "C"],
            &[
                vec!["long-cell".into(), "x".into(), "last".into()],
                vec!["y".into(), "wider-cell".into(), "z".into()],
            ],
        );
        assert_eq!(
            t,
            "A          BB          C\n\
             long-cell  x           last\n\
             y          wider-cell  z\n"
        );
    }

    #[test]
    fn cluster_status_aligns_partition_columns_under_their_headers() {
        let t = cluster_status(&status());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "CONTROLLER  2");
        let header = lines.iter().find(|l| l.starts_with("TOPIC")).unwrap();
        let long = lines
            .iter()
            .find(|l| l.starts_with("orders-with-a-long-name"))
            .unwrap();
        let short = lines.iter().find(|l| l.starts_with("orders ")).unwrap();
        // Every column starts at the same offset on every line.
        assert_eq!(col(header, "PARTITION"), col(long, "11"));
        assert_eq!(col(header, "PARTITION"), col(short, "0 "));
        assert_eq!(col(header, "TERM"), col(long, "12"));
        assert_eq!(col(header, "REPLICAS"), col(short, "1,2,3"));
        assert!(t.lines().all(|l| !l.ends_with(' ')), "{t}");
    }

    #[test]
    fn a_lagging_replica_shows_its_lag_and_a_dead_broker_when_last_seen() {
        let t = cluster_status(&status());
        let short = t.lines().find(|l| l.starts_with("orders ")).unwrap();
        assert!(short.ends_with("1:0 2:2 3:320"), "{short}");
        let dead = t.lines().find(|l| l.starts_with("3 ")).unwrap();
        assert!(
            dead.contains("no") && dead.contains("12345 ms ago"),
            "{dead}"
        );
    }

    #[test]
    fn a_partition_with_no_leader_shows_a_dash_for_leader_and_lag() {
        let t = cluster_status(&status());
        let long = t
            .lines()
            .find(|l| l.starts_with("orders-with-a-long-name"))
            .unwrap();
        let cells: Vec<&str> = long.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "orders-with-a-long-name",
                "11",
                "-",
                "12",
                "40",
                "1,2,3",
                "-"
            ]
        );
    }

    #[test]
    fn no_controller_and_no_partitions_are_said_in_words() {
        let mut s = status();
        s.controller = None;
        s.partitions.clear();
        let t = cluster_status(&s);
        assert!(
            t.starts_with("CONTROLLER  none (election in progress)\n"),
            "{t}"
        );
        assert!(t.ends_with("(no partitions)\n"), "{t}");
    }

    fn describe() -> DescribeTopicResponse {
        DescribeTopicResponse {
            topic: TopicMetadata {
                name: "orders".into(),
                error: 0,
                partitions: (0..2)
                    .map(|p| PartitionMetadata {
                        partition: p,
                        leader: (p == 0).then_some(1),
                        leader_term: 7,
                        shard: p,
                        replicas: vec![1, 2, 3],
                    })
                    .collect(),
            },
            replication: 3,
            config: TopicConfig {
                retention_bytes: Some(1 << 30),
                retention_ms: None,
                segment_bytes: None,
                segment_ms: None,
                cleanup: CleanupPolicy::Delete,
                durability: Durability::EveryBatch,
                tombstone_retention_ms: None,
            },
        }
    }

    #[test]
    fn describe_shows_settings_then_partitions_with_lag_from_the_status() {
        let t = describe_topic(&describe(), Some(&status()));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "TOPIC            orders");
        assert_eq!(lines[2], "REPLICATION      3");
        assert_eq!(lines[4], "RETENTION BYTES  1073741824");
        assert_eq!(lines[5], "RETENTION MS     -");
        assert_eq!(lines[6], "");
        assert_eq!(
            lines[7],
            "PARTITION  LEADER  TERM  SHARD  REPLICAS  LAG (BROKER:ENTRIES)"
        );
        assert_eq!(
            lines[8],
            "0          1       7     0      1,2,3     1:0 2:2 3:320"
        );
        assert_eq!(lines[9], "1          -       7     1      1,2,3     -");
    }

    #[test]
    fn describe_without_a_status_has_no_lag() {
        let t = describe_topic(&describe(), None);
        assert!(t.lines().last().unwrap().ends_with("1,2,3     -"), "{t}");
    }

    #[test]
    fn an_empty_topic_list_says_so_and_a_full_one_counts_leaderless_partitions() {
        assert_eq!(topic_list(&[]), "(no topics)\n");
        let t = topic_list(&[describe().topic]);
        assert_eq!(
            t,
            "NAME    PARTITIONS  NO LEADER  ERROR\n\
             orders  2           1          -\n"
        );
    }
}
