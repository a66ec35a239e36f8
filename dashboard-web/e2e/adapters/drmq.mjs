// e2e adapter for a real local cluster: three `drmq broker` processes on
// loopback started here (so one can be killed with kill -9 and started again
// while the others keep running), a topic of 6 partitions at RF=3, and load
// from `drmq-loadtest run` for the whole test.
//
//   DRMQ_BIN (default ../target/release/drmq), DRMQ_LOADTEST_BIN (default:
//   drmq-loadtest beside DRMQ_BIN), E2E_SHARDS (2), E2E_RATE (msgs/s, 2000).
//
// The page is opened on a broker that leads at least one partition, so
// killing "the broker that served the page" kills a leader too.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const name = 'drmq';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../../..');
const DRMQ = process.env.DRMQ_BIN ?? path.join(ROOT, 'target/release/drmq');
const LOADTEST = process.env.DRMQ_LOADTEST_BIN ?? path.join(path.dirname(DRMQ), 'drmq-loadtest');
const NODES = 3;
const SHARDS = Number(process.env.E2E_SHARDS ?? 2);
const RATE = Number(process.env.E2E_RATE ?? 2000);
const TOPIC = 'e2e';
const START_TIMEOUT_MS = 30_000;

const log = (...a) => console.log('[e2e drmq]', ...a);

let dataDir = null;
let base = 0;
const secret = `e2e-${process.pid}-${Date.now()}`;
const children = new Map(); // broker id -> child process
let load = null;

const clientPort = (id) => base + (id - 1) * 16;
const peerPort = (id) => base + 200 + (id - 1) * 16;
const httpPort = (id) => base + 400 + id;
const brokers = () => [...Array(NODES).keys()].map((i) => `127.0.0.1:${clientPort(i + 1)}`).join(',');

function startBroker(id) {
  const peers = [...Array(NODES).keys()].map((i) => `${i + 1}=127.0.0.1:${peerPort(i + 1)}`).join(',');
  const args = [
    'broker', '--id', String(id), '--data-dir', path.join(dataDir, `broker-${id}`),
    '--listen', `127.0.0.1:${clientPort(id)}`, '--peer-listen', `127.0.0.1:${peerPort(id)}`,
    '--http', `127.0.0.1:${httpPort(id)}`, '--shards', String(SHARDS), '--peers', peers,
  ];
  const err = fs.openSync(path.join(dataDir, `broker-${id}.log`), 'a');
  const child = spawn(DRMQ, args, {
    env: { ...process.env, DRMQ_CLUSTER_SECRET: secret },
    stdio: ['ignore', 'ignore', err],
  });
  children.set(id, child);
  log(`broker ${id} pid ${child.pid} http 127.0.0.1:${httpPort(id)}`);
}

async function get(url) {
  const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

async function until(what, ms, probe) {
  const deadline = Date.now() + ms;
  let last = null;
  while (Date.now() < deadline) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

/** Partitions of the e2e topic each broker leads, from their samples. */
async function leaders() {
  const led = new Map();
  for (let id = 1; id <= NODES; id++) {
    if (!children.has(id)) continue;
    try {
      const s = await get(`http://127.0.0.1:${httpPort(id)}/api/status`);
      const n = s.shards.flatMap((x) => x.partitions).filter((p) => p.topic === TOPIC && p.role === 'leader').length;
      led.set(id, n);
    } catch {
      led.set(id, 0);
    }
  }
  return led;
}

export async function start() {
  if (!fs.existsSync(DRMQ)) throw new Error(`${DRMQ} not found: build it (make build) or set DRMQ_BIN`);
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'drmq-e2e-'));
  base = 21000 + Math.floor(Math.random() * 200) * 20;
  for (let id = 1; id <= NODES; id++) startBroker(id);
  for (let id = 1; id <= NODES; id++) {
    await until(`broker ${id}'s telemetry`, START_TIMEOUT_MS, () => get(`http://127.0.0.1:${httpPort(id)}/api/cluster`));
  }
  await until('the e2e topic', START_TIMEOUT_MS, async () => {
    try {
      execFileSync(DRMQ, ['topic', 'create', TOPIC, '--partitions', '6', '--replication', '3', '--brokers', brokers()], {
        stdio: 'pipe',
        timeout: 15_000,
      });
      return true;
    } catch (e) {
      if (String(e.stderr ?? '').includes('TopicAlreadyExists')) return true;
      throw new Error(String(e.stderr ?? e.message).trim());
    }
  });
  if (fs.existsSync(LOADTEST)) {
    const out = fs.openSync(path.join(dataDir, 'loadtest.log'), 'a');
    load = spawn(LOADTEST, ['run', '--brokers', brokers(), '--topic', TOPIC, '--partitions', '6', '--replication', '3',
      '--rate', String(RATE), '--duration-s', '600', '--no-baselines', '--quiet'], { stdio: ['ignore', out, out] });
    log(`load: drmq-loadtest pid ${load.pid}, ${RATE} msgs/s`);
  } else {
    log(`${LOADTEST} not found: no load`);
  }
  const led = await until('a leader for every partition', START_TIMEOUT_MS, async () => {
    const l = await leaders();
    const total = [...l.values()].reduce((a, b) => a + b, 0);
    return total >= 6 ? l : null;
  });
  const [victim] = [...led.entries()].sort((a, b) => b[1] - a[1])[0];
  log(`leaders per broker: ${JSON.stringify([...led.entries()])}; the page is opened on broker ${victim}`);
  return { url: `http://127.0.0.1:${httpPort(victim)}/` };
}

export async function killBroker(id) {
  const c = children.get(id);
  if (!c) throw new Error(`broker ${id} is not running`);
  log(`kill -9 broker ${id} (pid ${c.pid})`);
  c.kill('SIGKILL');
  children.delete(id);
}

export async function reviveBroker(id) {
  startBroker(id);
}

export async function stop() {
  load?.kill('SIGKILL');
  load = null;
  for (const c of children.values()) c.kill('SIGKILL');
  children.clear();
  if (dataDir && !process.env.E2E_KEEP_DATA) fs.rmSync(dataDir, { recursive: true, force: true });
  else if (dataDir) log(`data kept in ${dataDir}`);
}
