// e2e adapter for a real cluster: the target and the actions are shell
// commands from the environment, with {id}, {topic}, {partition}, {to}
// replaced. For example, against three local brokers:
//
//   E2E_ADAPTER=command E2E_URL=http://127.0.0.1:8081/ \
//   E2E_KILL_CMD='kill -9 $(cat data/broker-{id}.pid)' \
//   E2E_REVIVE_CMD='scripts/start-broker {id}' node e2e/smoke.mjs
//
// E2E_START_CMD / E2E_STOP_CMD (optional) run before and after the test;
// E2E_MOVE_LEADER_CMD (optional) moves a leader.
import { execSync } from 'node:child_process';

const ACTION_TIMEOUT_MS = 30_000;

export const name = 'command';

function run(what, template, vars) {
  const cmd = Object.entries(vars).reduce((c, [k, v]) => c.replaceAll(`{${k}}`, String(v)), template);
  console.log(`[e2e] ${what}: ${cmd}`);
  execSync(cmd, { stdio: 'inherit', shell: '/bin/bash', timeout: ACTION_TIMEOUT_MS });
}

export async function start() {
  const url = process.env.E2E_URL;
  if (!url) throw new Error('E2E_URL is required with E2E_ADAPTER=command');
  if (!process.env.E2E_KILL_CMD) throw new Error('E2E_KILL_CMD is required with E2E_ADAPTER=command');
  if (process.env.E2E_START_CMD) run('start', process.env.E2E_START_CMD, {});
  return { url };
}

export async function killBroker(id) {
  run('kill', process.env.E2E_KILL_CMD, { id });
}

export const reviveBroker = process.env.E2E_REVIVE_CMD ? async (id) => run('revive', process.env.E2E_REVIVE_CMD, { id }) : undefined;

export const moveLeader = process.env.E2E_MOVE_LEADER_CMD
  ? async (topic, partition, to) => run('move leader', process.env.E2E_MOVE_LEADER_CMD, { topic, partition, to })
  : undefined;

export async function stop() {
  if (process.env.E2E_STOP_CMD) run('stop', process.env.E2E_STOP_CMD, {});
}
