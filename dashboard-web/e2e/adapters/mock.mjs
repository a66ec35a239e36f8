// e2e adapter for the mock cluster (scripts/mock-cluster.mjs): starts it on
// its own ports, kills and revives brokers through its control port.
import { spawn } from 'node:child_process';
import path from 'node:path';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BASE_PORT = Number(process.env.E2E_MOCK_BASE_PORT ?? 7301);
const CONTROL_PORT = BASE_PORT + 98;
const READY_TIMEOUT_MS = 15_000;

let child = null;
let control = null;

export const name = 'mock';

export async function start() {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'index.html'))) throw new Error('dist/ is not built: run `npm run build` first');
  child = spawn(process.execPath, [path.join(ROOT, 'scripts', 'mock-cluster.mjs')], {
    env: { ...process.env, MOCK_BASE_PORT: String(BASE_PORT), MOCK_CONTROL_PORT: String(CONTROL_PORT), MOCK_HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const ready = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`mock not ready in ${READY_TIMEOUT_MS} ms:\n${out}`)), READY_TIMEOUT_MS);
    child.stdout.on('data', (d) => {
      out += d;
      const m = /MOCK READY (.*)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(JSON.parse(m[1]));
      }
    });
    child.stderr.on('data', (d) => (out += d));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`mock exited with ${code}:\n${out}`));
    });
  });
  child.stdout.on('data', (d) => process.env.E2E_VERBOSE && process.stdout.write(d));
  control = ready.control;
  return { url: ready.brokers[0] };
}

async function post(pathAndQuery) {
  const r = await fetch(`${control}${pathAndQuery}`, { method: 'POST' });
  if (!r.ok) throw new Error(`mock control ${pathAndQuery}: HTTP ${r.status}`);
}

export async function killBroker(id) {
  await post(`/kill?broker=${id}`);
}

export async function reviveBroker(id) {
  await post(`/revive?broker=${id}`);
}

export async function moveLeader(topic, partition, to) {
  await post(`/move-leader?topic=${encodeURIComponent(topic)}&partition=${partition}&to=${to}`);
}

/** Stops the mock this adapter started (and only it): SIGTERM, then SIGKILL after 3 s. */
export async function stop() {
  const c = child;
  child = null;
  if (!c || c.exitCode !== null) return;
  const exited = new Promise((resolve) => c.once('exit', resolve));
  c.kill('SIGTERM');
  const t = setTimeout(() => c.kill('SIGKILL'), 3000);
  await exited;
  clearTimeout(t);
}
