#!/usr/bin/env node
// A fake three-broker DRMQ cluster speaking the telemetry protocol of
// docs/TELEMETRY.md: each broker serves /api/cluster, /ws and the built
// dashboard (dist/) on its own port, and a control port lets a script kill,
// revive or move leaders, as a test would do to a real cluster.
//
//   node scripts/mock-cluster.mjs            # brokers on 7101..7103, control on 7199
//   curl -XPOST 'localhost:7199/kill?broker=1'
//   curl -XPOST 'localhost:7199/revive?broker=1'
//   curl -XPOST 'localhost:7199/move-leader?topic=orders&partition=0&to=3'
//   curl -XPOST 'localhost:7199/disk-full?broker=2&on=1'
//   curl -XPOST 'localhost:7199/create-topic?topic=logs&partitions=2'
//   curl localhost:7199/state
//
// Environment: MOCK_HOST (127.0.0.1), MOCK_BASE_PORT (7101), MOCK_CONTROL_PORT
// (base + 98), MOCK_BROKERS (3), MOCK_SHARDS (4), MOCK_SAMPLE_MS (1000),
// MOCK_ELECTION_MS (800: how long after a kill the new leaders are elected),
// MOCK_DIST (../dist beside this script).
//
// Not a simulation of Raft: leaders move when the control port says so or
// when a leader dies; the numbers only need to look like a busy cluster.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';

const HOST = process.env.MOCK_HOST ?? '127.0.0.1';
const BASE_PORT = Number(process.env.MOCK_BASE_PORT ?? 7101);
const CONTROL_PORT = Number(process.env.MOCK_CONTROL_PORT ?? BASE_PORT + 98);
const BROKERS = Number(process.env.MOCK_BROKERS ?? 3);
const SHARDS = Number(process.env.MOCK_SHARDS ?? 4);
const SAMPLE_MS = Number(process.env.MOCK_SAMPLE_MS ?? 1000);
const ELECTION_MS = Number(process.env.MOCK_ELECTION_MS ?? 800);
const DIST = process.env.MOCK_DIST ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist');
/** A client whose socket holds more than this unsent is slow: it loses samples (protocol: keep the newest). */
const CLIENT_BUFFERED_MAX = 1 << 20;
/** Bytes of one record on the wire, for the byte counters. */
const RECORD_BYTES = 180;
const GIB = 1024 ** 3;

const ids = Array.from({ length: BROKERS }, (_, i) => i + 1);
const log = (...a) => console.log(`[mock ${new Date().toISOString().slice(11, 23)}]`, ...a);

// ---------------------------------------------------------------- state

/** When the load last advanced the counters. */
let lastStep = Date.now();

function newShard(shard, id) {
  return {
    shard,
    produce_requests_total: 0,
    fetch_requests_total: 0,
    records_in_total: 0,
    records_out_total: 0,
    bytes_in_total: 0,
    bytes_out_total: 0,
    errors_total: {},
    connections: 2 + ((shard + id) % 3),
    lanes: ids
      .filter((p) => p !== id)
      .flatMap((peer) => ['control', 'bulk'].map((lane) => ({ peer, lane, frames_queued: 0, frames_dropped_total: 0, reconnects_total: 0 }))),
  };
}

const brokers = new Map(
  ids.map((id) => [
    id,
    {
      id,
      alive: true,
      started_ms: Date.now() - 3_600_000 * id,
      seq: 0,
      shards: Array.from({ length: SHARDS }, (_, s) => newShard(s, id)),
      disk: { used_bytes: 12 * GIB * id, free_bytes: 80 * GIB, floor_bytes: 256 * 1024 ** 2, budget_bytes: id === 3 ? 100 * GIB : null, full: false },
      server: null,
      wss: null,
      sockets: new Set(),
    },
  ]),
);

let controller = { leader: 1, term: 1 };
const partitions = [];
function addTopic(topic, count, firstLeaderIndex = 0) {
  for (let p = 0; p < count; p++) {
    const leader = ids[(p + firstLeaderIndex) % ids.length];
    partitions.push({
      topic,
      partition: p,
      leader,
      term: 1,
      replicas: ids.slice(),
      // Raft index (one per batch) and offset (one per record), per replica
      last_index: { ...Object.fromEntries(ids.map((i) => [i, 1000])) },
      log_end: { ...Object.fromEntries(ids.map((i) => [i, 100_000])) },
      log_start: 0,
      rate: 150 + 90 * ((p * 7 + topic.length) % 5),
      snapshot: null,
    });
  }
}
addTopic('orders', 6, 0);
addTopic('payments', 3, 1);
addTopic('audit', 2, 2);

// ---------------------------------------------------------------- frames

function send(b, text) {
  for (const ws of b.sockets) {
    if (ws.readyState !== ws.OPEN) continue;
    ws.send(text);
  }
}

function emit(id, kind, fields) {
  const b = brokers.get(id);
  if (!b?.alive) return;
  const frame = { v: 1, type: 'event', broker: id, ts_ms: Date.now(), seq: b.seq++, kind, ...fields };
  log(`event from ${id}: ${kind} ${JSON.stringify(fields)}`);
  send(b, JSON.stringify(frame));
}

function partitionView(id, p) {
  const leader = p.leader;
  const isLeader = leader === id;
  const leaderEnd = p.log_end[leader] ?? 0;
  const leaderIdx = p.last_index[leader] ?? 0;
  const replicas = p.replicas.map((r) => ({
    broker: r,
    match_index: isLeader ? p.last_index[r] : null,
    lag_entries: isLeader ? leaderIdx - p.last_index[r] : null,
  }));
  const hw = Math.min(...p.replicas.filter((r) => brokers.get(r).alive).map((r) => p.log_end[r]).sort((a, b) => b - a).slice(0, 2));
  return {
    topic: p.topic,
    partition: p.partition,
    shard: (p.partition + p.topic.length) % SHARDS,
    role: isLeader ? 'leader' : 'follower',
    leader,
    term: p.term,
    replicas,
    commit_index: isLeader ? leaderIdx - 1 : p.last_index[id] - 1,
    high_watermark: Math.min(hw, isLeader ? leaderEnd : p.log_end[id]),
    log_start_offset: p.log_start,
    log_end_offset: p.log_end[id],
    size_bytes: (p.log_end[id] - p.log_start) * RECORD_BYTES,
    snapshot_transfer:
      isLeader && p.snapshot
        ? { to: p.snapshot.to, bytes_sent: p.snapshot.sent, bytes_total: p.snapshot.total, bytes_per_sec: p.snapshot.rate }
        : null,
  };
}

function sample(id) {
  const b = brokers.get(id);
  // the counters are as of the last load step: stamp the sample with that
  // time, or a sample sent between steps would make the next rate too high
  const now = lastStep;
  const t = now / 1000;
  return {
    v: 1,
    type: 'sample',
    broker: id,
    ts_ms: now,
    uptime_ms: now - b.started_ms,
    interval_ms: SAMPLE_MS,
    controller: controller.leader,
    controller_term: controller.term,
    shards: b.shards.map((s) => {
      // broker 2's last core runs hot; the rest wander between 15 % and 60 %
      const hot = id === 2 && s.shard === SHARDS - 1;
      const busy = hot ? 0.9 + 0.06 * Math.sin(t / 3) : 0.35 + 0.2 * Math.sin(t / 7 + s.shard + id);
      const p50 = 600 + 300 * busy;
      return {
        shard: s.shard,
        produce_requests_total: s.produce_requests_total,
        fetch_requests_total: s.fetch_requests_total,
        records_in_total: s.records_in_total,
        records_out_total: s.records_out_total,
        bytes_in_total: s.bytes_in_total,
        bytes_out_total: s.bytes_out_total,
        errors_total: s.errors_total,
        connections: s.connections,
        busy_fraction: Number(busy.toFixed(3)),
        task_queue_latency_us_max: Math.round(hot ? 7000 + 2000 * Math.sin(t) : 60 + 200 * busy),
        produce_latency_us_p50: Math.round(p50),
        produce_latency_us_p90: Math.round(p50 * 1.8),
        produce_latency_us_p99: Math.round(p50 * (hot ? 9 : 4)),
        produce_latency_us_p999: Math.round(p50 * (hot ? 20 : 9)),
        peer_lanes: s.lanes.map((l) => ({ ...l, up: brokers.get(l.peer).alive })),
      };
    }),
    partitions: partitions.filter((p) => p.replicas.includes(id)).map((p) => partitionView(id, p)),
    disk: { ...b.disk },
    ...mockGroups(id, now),
  };
}

// Broker 1 coordinates one consumer group of two members sharing the first
// topic's partitions; their leases renew every second, and the group commits
// a little behind the log end.
function mockGroups(id, now) {
  if (id !== 1 || !brokers.get(1).alive) return { groups: [], group_lag: [] };
  const first = partitions.filter((p) => p.topic === partitions[0].topic);
  const members = ['billing-7-3f0c2a9e', 'billing-9-81d2a7c4'];
  const groups = members.map((member, i) => ({
    group: 'billing',
    member,
    generation: 4,
    partitions: first.filter((_, k) => k % members.length === i).map((p) => ({ topic: p.topic, partition: p.partition })),
    lease_expires_ms: now + 3000 - (now % 1000),
  }));
  const parts = first.map((p) => {
    const high = Math.max(...Object.values(p.log_end));
    const committed = Math.max(0, high - 40 - 20 * p.partition);
    return { topic: p.topic, partition: p.partition, committed, high_watermark: high, lag: high - committed };
  });
  const lag = parts.reduce((a, p) => a + p.lag, 0);
  return { groups, group_lag: [{ group: 'billing', generation: 4, members: members.length, partitions: parts, lag }] };
}

// ---------------------------------------------------------------- load

function step(dtMs) {
  const dt = dtMs / 1000;
  for (const p of partitions) {
    const leader = brokers.get(p.leader);
    if (!leader.alive) continue;
    const records = Math.round(p.rate * dt * (0.85 + 0.3 * Math.random()));
    const batches = Math.max(1, Math.round(records / 50));
    p.log_end[p.leader] += records;
    p.last_index[p.leader] += batches;
    const shard = leader.shards[(p.partition + p.topic.length) % SHARDS];
    shard.records_in_total += records;
    shard.bytes_in_total += records * RECORD_BYTES;
    shard.produce_requests_total += batches;
    shard.records_out_total += Math.round(records * 0.95);
    shard.bytes_out_total += Math.round(records * 0.95) * RECORD_BYTES;
    shard.fetch_requests_total += batches * 2;
    if (Math.random() < 0.05) shard.errors_total.NotLeader = (shard.errors_total.NotLeader ?? 0) + 1;
    leader.disk.used_bytes += records * RECORD_BYTES * 3;
    leader.disk.free_bytes = Math.max(0, leader.disk.free_bytes - records * RECORD_BYTES * 3);
    // followers that are alive catch up, except for a few entries in flight;
    // one that just came back catches up over several seconds
    for (const r of p.replicas) {
      if (r === p.leader || !brokers.get(r).alive) continue;
      if (p.snapshot?.to === r) continue;
      const behind = p.last_index[p.leader] - p.last_index[r];
      const catchUp = behind > 50 ? Math.min(behind, batches + 300) : Math.max(0, behind - Math.round(Math.random() * 4));
      const frac = behind > 0 ? catchUp / behind : 0;
      p.last_index[r] += catchUp;
      p.log_end[r] += Math.round((p.log_end[p.leader] - p.log_end[r]) * frac);
    }
    if (p.snapshot) {
      p.snapshot.sent = Math.min(p.snapshot.total, p.snapshot.sent + p.snapshot.rate * dt);
      if (p.snapshot.sent >= p.snapshot.total) {
        const s = p.snapshot;
        p.snapshot = null;
        p.last_index[s.to] = p.last_index[p.leader] - 50;
        p.log_end[s.to] = p.log_end[p.leader] - 2500;
        emit(p.leader, 'snapshot_finished', { topic: p.topic, partition: p.partition, to: s.to, bytes_total: s.total, ok: true, duration_ms: Date.now() - s.started });
      }
    }
  }
  // broker 3's core 1 cannot keep its bulk lane to broker 1 drained: it queues and drops
  const b3 = brokers.get(3);
  if (b3?.alive && brokers.get(1)?.alive) {
    const lane = b3.shards[1 % SHARDS].lanes.find((l) => l.peer === 1 && l.lane === 'bulk');
    lane.frames_queued = 240 + Math.round(16 * Math.random());
    lane.frames_dropped_total += Math.round(3 + 5 * Math.random());
  }
  for (const b of brokers.values()) {
    for (const s of b.shards)
      for (const l of s.lanes) if (!(b.id === 3 && l.peer === 1 && l.lane === 'bulk')) l.frames_queued = brokers.get(l.peer).alive ? Math.round(4 * Math.random()) : 0;
  }
}

// ---------------------------------------------------------------- faults

function electAway(deadId) {
  for (const p of partitions) {
    if (p.leader !== deadId) continue;
    const next = p.replicas.filter((r) => r !== deadId && brokers.get(r).alive).sort((a, b) => p.log_end[b] - p.log_end[a])[0];
    if (next === undefined) continue;
    p.term += 1;
    emit(next, 'election_started', { topic: p.topic, partition: p.partition, term: p.term, candidate: next });
    p.leader = next;
    p.snapshot = null;
    emit(next, 'leader_changed', { topic: p.topic, partition: p.partition, term: p.term, leader: next, previous_leader: deadId });
  }
  if (controller.leader === deadId) {
    const next = ids.find((i) => brokers.get(i).alive);
    if (next !== undefined) {
      controller = { leader: next, term: controller.term + 1 };
      emit(next, 'election_started', { topic: null, partition: null, term: controller.term, candidate: next });
      emit(next, 'leader_changed', { topic: null, partition: null, term: controller.term, leader: next, previous_leader: deadId });
    }
  }
}

function kill(id) {
  const b = brokers.get(id);
  if (!b || !b.alive) return false;
  b.alive = false;
  // like kill -9: every socket is cut, the listener is gone
  for (const ws of b.sockets) ws.terminate();
  b.sockets.clear();
  b.server.close();
  b.server.closeAllConnections?.();
  for (const other of ids) if (other !== id) emit(other, 'broker_down', { peer: id });
  log(`broker ${id} killed`);
  setTimeout(() => electAway(id), ELECTION_MS);
  return true;
}

async function revive(id) {
  const b = brokers.get(id);
  if (!b || b.alive) return false;
  b.alive = true;
  b.started_ms = Date.now();
  b.seq = 0;
  b.shards = Array.from({ length: SHARDS }, (_, s) => newShard(s, id));
  await listen(b);
  for (const other of ids) {
    if (other === id) continue;
    emit(other, 'broker_up', { peer: id });
    for (const s of brokers.get(other).shards) for (const l of s.lanes) if (l.peer === id) l.reconnects_total += 1;
  }
  // the partition it fell furthest behind on gets a snapshot from its leader
  const behind = partitions
    .filter((p) => p.replicas.includes(id) && p.leader !== id)
    .sort((a, b2) => a.last_index[id] - a.last_index[a.leader] - (b2.last_index[id] - b2.last_index[b2.leader]))[0];
  if (behind && brokers.get(behind.leader).alive) {
    behind.snapshot = { to: id, sent: 0, total: 96 * 1024 ** 2, rate: 24 * 1024 ** 2, started: Date.now() };
    emit(behind.leader, 'snapshot_started', { topic: behind.topic, partition: behind.partition, to: id, bytes_total: behind.snapshot.total });
  }
  log(`broker ${id} revived`);
  return true;
}

function moveLeader(topic, partition, to) {
  const p = partitions.find((x) => x.topic === topic && x.partition === partition);
  if (!p || !p.replicas.includes(to) || !brokers.get(to).alive || p.leader === to) return false;
  const from = p.leader;
  p.term += 1;
  p.leader = to;
  p.last_index[to] = Math.max(p.last_index[to], p.last_index[from] ?? 0);
  p.log_end[to] = Math.max(p.log_end[to], p.log_end[from] ?? 0);
  emit(to, 'leader_changed', { topic, partition, term: p.term, leader: to, previous_leader: from });
  return true;
}

function setDiskFull(id, on) {
  const b = brokers.get(id);
  if (!b || b.disk.full === on) return false;
  b.disk.full = on;
  b.disk.free_bytes = on ? Math.round(b.disk.floor_bytes * 0.8) : 40 * GIB;
  emit(id, on ? 'disk_full' : 'disk_ok', { free_bytes: b.disk.free_bytes, floor_bytes: b.disk.floor_bytes });
  return true;
}

function createTopic(topic, count) {
  if (partitions.some((p) => p.topic === topic)) return false;
  addTopic(topic, count, 0);
  emit(controller.leader, 'topic_created', { topic, partitions: count, replication_factor: ids.length });
  return true;
}

// ---------------------------------------------------------------- HTTP

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml', '.png': 'image/png', '.json': 'application/json' };

function clusterInfo(id) {
  return {
    v: 1,
    broker: id,
    controller: controller.leader,
    brokers: ids.map((i) => ({ id: i, client: `${HOST}:${9091 + i}`, http: `${HOST}:${BASE_PORT + i - 1}`, alive: brokers.get(i).alive })),
  };
}

function serveStatic(req, res) {
  const url = new URL(req.url, 'http://x');
  let rel = decodeURIComponent(url.pathname);
  if (rel === '/' || rel === '') rel = '/index.html';
  const file = path.normalize(path.join(DIST, rel));
  if (!file.startsWith(path.normalize(DIST) + path.sep)) {
    res.writeHead(403).end();
    return;
  }
  fs.readFile(file, (err, data) => {
    if (err) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(rel === '/index.html' ? 'dist/ not built: run npm run build\n' : 'not found\n');
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' }).end(data);
  });
}

function listen(b) {
  return new Promise((resolve, reject) => {
    const server = http.createServer((req, res) => {
      if (!b.alive) {
        req.socket.destroy();
        return;
      }
      if (req.url.startsWith('/api/cluster')) {
        res.writeHead(200, { 'content-type': 'application/json', 'access-control-allow-origin': '*', 'cache-control': 'no-store' });
        res.end(JSON.stringify(clusterInfo(b.id)));
        return;
      }
      serveStatic(req, res);
    });
    const wss = new WebSocketServer({ noServer: true });
    server.on('upgrade', (req, socket, head) => {
      if (!b.alive || !req.url.startsWith('/ws')) {
        socket.destroy();
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) => {
        b.sockets.add(ws);
        ws.on('close', () => b.sockets.delete(ws));
        ws.on('error', () => b.sockets.delete(ws));
        // read-only: whatever the page sends is ignored
        ws.on('message', () => {});
        ws.send(JSON.stringify(sample(b.id)));
      });
    });
    server.once('error', reject);
    server.listen(BASE_PORT + b.id - 1, HOST, () => {
      b.server = server;
      b.wss = wss;
      resolve();
    });
  });
}

function control(req, res) {
  const url = new URL(req.url, 'http://x');
  const q = url.searchParams;
  const reply = (code, body) => {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  const brokerParam = () => Number(q.get('broker'));
  (async () => {
    switch (url.pathname) {
      case '/state':
        return reply(200, {
          controller,
          brokers: ids.map((i) => ({ id: i, alive: brokers.get(i).alive, http: `${HOST}:${BASE_PORT + i - 1}`, url: `http://${HOST}:${BASE_PORT + i - 1}/` })),
          partitions: partitions.map((p) => ({ topic: p.topic, partition: p.partition, leader: p.leader, term: p.term })),
        });
      case '/kill':
        return reply(kill(brokerParam()) ? 200 : 409, { ok: true });
      case '/revive':
        return reply((await revive(brokerParam())) ? 200 : 409, { ok: true });
      case '/move-leader':
        return reply(moveLeader(q.get('topic'), Number(q.get('partition')), Number(q.get('to'))) ? 200 : 409, { ok: true });
      case '/disk-full':
        return reply(setDiskFull(brokerParam(), q.get('on') !== '0') ? 200 : 409, { ok: true });
      case '/create-topic':
        return reply(createTopic(q.get('topic'), Number(q.get('partitions') ?? 1)) ? 200 : 409, { ok: true });
      default:
        return reply(404, { error: 'unknown control path' });
    }
  })().catch((e) => reply(500, { error: String(e) }));
}

// ---------------------------------------------------------------- main

const ticker = setInterval(() => {
  const now = Date.now();
  step(now - lastStep);
  lastStep = now;
  for (const b of brokers.values()) {
    if (!b.alive) continue;
    const text = JSON.stringify(sample(b.id));
    for (const ws of b.sockets) {
      // a slow page loses this sample rather than buffering without bound
      if (ws.readyState === ws.OPEN && ws.bufferedAmount < CLIENT_BUFFERED_MAX) ws.send(text);
    }
  }
}, SAMPLE_MS);

const controlServer = http.createServer(control);

async function main() {
  for (const b of brokers.values()) await listen(b);
  await new Promise((resolve, reject) => {
    controlServer.once('error', reject);
    controlServer.listen(CONTROL_PORT, HOST, resolve);
  });
  for (const id of ids) log(`broker ${id}: http://${HOST}:${BASE_PORT + id - 1}/`);
  log(`control: http://${HOST}:${CONTROL_PORT}/state (kill, revive, move-leader, disk-full, create-topic)`);
  // a line the e2e script waits for
  console.log(`MOCK READY ${JSON.stringify({ brokers: ids.map((id) => `http://${HOST}:${BASE_PORT + id - 1}/`), control: `http://${HOST}:${CONTROL_PORT}` })}`);
}

function shutdown() {
  clearInterval(ticker);
  for (const b of brokers.values()) {
    for (const ws of b.sockets) ws.terminate();
    b.server?.close();
    b.server?.closeAllConnections?.();
  }
  controlServer.close();
  controlServer.closeAllConnections?.();
  setTimeout(() => process.exit(0), 100).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

main().catch((e) => {
  console.error(`mock-cluster: ${e.stack ?? e}`);
  process.exit(1);
});
