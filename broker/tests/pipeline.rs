//! The pipelined producer and consumer (`client`) against a real
//! `drmq broker` process on loopback.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use client::{
    routes, ClientConfig, Consumer, ConsumerConfig, DeliveryError, Producer, ProducerConfig,
    StartAt,
};

mod common;
use common::Broker;

/// Test helpers on the shared broker fixture.
trait BrokerExt {
    fn client(&self) -> ClientConfig;
}

impl BrokerExt for Broker {
    fn client(&self) -> ClientConfig {
        ClientConfig::new(vec![self.listen()])
    }
}

/// Consumes every partition from the start until `want` records arrived (or
/// a deadline), returning the values by partition in offset order.
fn consume_all(b: &Broker, topic: &str, want: usize) -> BTreeMap<u32, Vec<(u64, Vec<u8>)>> {
    let mut cfg = ConsumerConfig::new(b.client(), topic);
    cfg.start = StartAt::Earliest;
    cfg.fetch_bytes_max = 64 * 1024; // several fetches per partition
    let mut consumer = Consumer::new(cfg).unwrap();
    let mut got: BTreeMap<u32, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while n < want {
        assert!(Instant::now() < deadline, "consumed only {n} of {want}");
        n += consumer
            .poll(Duration::from_millis(50), |p, rec, _| {
                got.entry(p)
                    .or_default()
                    .push((rec.offset, rec.value.unwrap().to_vec()));
            })
            .unwrap();
    }
    got
}

#[test]
fn every_record_is_acknowledged_once_in_order_and_consumed_back() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    b.create_topic("pipe", 4);
    let mut cfg = ProducerConfig::new(b.client(), "pipe");
    cfg.batch_bytes_max = 4096; // many batches
    cfg.in_flight_max = 4;
    let mut p = Producer::new(cfg).unwrap();
    assert_eq!(p.partition_count(), 4);
    const N: u64 = 5_000;
    let mut deliveries = Vec::new();
    let mut window_max = 0;
    for i in 0..N {
        let key = (i % 17).to_le_bytes();
        p.send(Some(&key), format!("v{i}").as_bytes(), 0, i)
            .unwrap();
        window_max = window_max.max(p.in_flight());
        deliveries.extend(p.take_deliveries());
    }
    p.flush(Instant::now() + Duration::from_secs(20)).unwrap();
    deliveries.extend(p.take_deliveries());
    assert!(window_max <= 4, "in flight {window_max} above the window");

    // Every tag acknowledged exactly once; offsets dense per partition.
    let mut tags: Vec<u64> = Vec::new();
    let mut offsets: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for d in &deliveries {
        let base = d.result.clone().unwrap();
        for (i, t) in d.tags.iter().enumerate() {
            tags.push(*t);
            offsets
                .entry(d.partition)
                .or_default()
                .push((base + i as u64, *t));
        }
    }
    tags.sort_unstable();
    assert_eq!(tags, (0..N).collect::<Vec<_>>());
    for list in offsets.values_mut() {
        list.sort_unstable();
        // Offset 0 holds the first leader's no-op (a control record).
        for (i, (off, _)) in list.iter().enumerate() {
            assert_eq!(*off, 1 + i as u64, "offsets must be dense");
        }
        // Records of one key keep their order: tags rise within a partition
        // for the same key.
        let mut last_by_key: BTreeMap<u64, u64> = BTreeMap::new();
        for (_, tag) in list.iter() {
            let prev = last_by_key.insert(tag % 17, *tag);
            assert!(prev.is_none_or(|p| p < *tag));
        }
    }

    let got = consume_all(&b, "pipe", N as usize);
    for (partition, recs) in &got {
        let acked = &offsets[partition];
        assert_eq!(recs.len(), acked.len());
        for ((off, value), (aoff, tag)) in recs.iter().zip(acked) {
            assert_eq!(off, aoff);
            assert_eq!(value, format!("v{tag}").as_bytes());
        }
    }
}

#[test]
fn wrong_routes_are_corrected_by_not_leader_hints() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    b.create_topic("hinted", 8);
    let real = routes(&b.client(), "hinted").unwrap();
    // With two shards, some of 8 partitions live on shard 1.
    assert!(real.iter().any(|a| *a != b.listen()), "{real:?}");
    let mut cfg = ProducerConfig::new(b.client(), "hinted");
    cfg.linger = Duration::ZERO;
    let mut p = Producer::with_routes(cfg, vec![b.listen(); 8]).unwrap();
    for part in 0..8 {
        p.send_to(part, None, b"x", 0, u64::from(part)).unwrap();
    }
    p.flush(Instant::now() + Duration::from_secs(20)).unwrap();
    let ds = p.take_deliveries();
    assert_eq!(ds.len(), 8);
    // Offset 0 of each partition is its first leader's no-op.
    assert!(ds.iter().all(|d| d.result == Ok(1)), "{ds:?}");
    assert!(p.stats().reroutes > 0);
    assert!(p.stats().retries_by_kind["NotLeader"] > 0);
    let got = consume_all(&b, "hinted", 8);
    assert_eq!(got.values().map(Vec::len).sum::<usize>(), 8);
}

#[test]
fn an_unreachable_partition_fails_with_a_clear_error_after_the_deadline() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // The listener is dropped: connections are refused.
    let mut client = ClientConfig::new(vec![dead]);
    client.retry_backoff_min = Duration::from_millis(5);
    client.retry_backoff_max = Duration::from_millis(20);
    let mut cfg = ProducerConfig::new(client, "nowhere");
    cfg.delivery_timeout = Duration::from_millis(200);
    let mut p = Producer::with_routes(cfg, vec![dead]).unwrap();
    p.send(None, b"lost", 0, 7).unwrap();
    p.flush(Instant::now() + Duration::from_secs(10)).unwrap();
    let ds = p.take_deliveries();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].tags, vec![7]);
    match &ds[0].result {
        Err(e @ DeliveryError::Deadline { attempts, last }) => {
            assert!(*attempts > 1, "{e}");
            assert!(last.contains(&dead.to_string()), "{e}");
            assert_eq!(e.kind(), "DeliveryDeadline");
        }
        other => panic!("expected a deadline error, got {other:?}"),
    }
}

#[test]
fn settings_outside_their_limits_are_refused() {
    let addr = SocketAddr::from(([127, 0, 0, 1], 9));
    let mut cfg = ProducerConfig::new(ClientConfig::new(vec![addr]), "t");
    cfg.in_flight_max = 0;
    let err = Producer::with_routes(cfg.clone(), vec![addr])
        .err()
        .unwrap();
    assert!(err.to_string().contains("in_flight_max"), "{err}");
    cfg.in_flight_max = 1;
    cfg.batch_bytes_max = 64 << 20;
    let err = Producer::with_routes(cfg, vec![addr]).err().unwrap();
    assert!(err.to_string().contains("batch_bytes_max"), "{err}");
}
