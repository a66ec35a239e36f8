#!/usr/bin/env node
// End-to-end smoke test of the dashboard in a real browser (Debian's chromium
// driven by playwright-core):
//   1. the page shows every broker up, partitions with leaders, a non-zero throughput;
//   2. the broker that served the page (or E2E_KILL_BROKER) is killed: within
//      E2E_DEADLINE_MS (5 s) the page shows it down and a new leader for every
//      partition it led, and the other brokers still up;
//   3. if the adapter can revive it, the page shows it up again.
// Screenshots go to $SCREENSHOT_DIR (default e2e/out): before.png, after.png, revived.png.
//
// The target is pluggable (e2e/adapters/): E2E_ADAPTER=mock (default: starts
// scripts/mock-cluster.mjs), E2E_ADAPTER=command (a real cluster: E2E_URL,
// E2E_KILL_CMD, ...), or a path to a module with the same exports.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR ?? path.join(HERE, 'out');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
/** How long the page may take to show the killed broker down and its partitions' new leaders. */
const DEADLINE_MS = Number(process.env.E2E_DEADLINE_MS ?? 5000);
/** How many brokers the page must show up at the start. */
const BROKERS_EXPECTED = Number(process.env.E2E_BROKERS ?? 3);
/** The whole run, start to cleanup; past it the test fails and cleans up. */
const TOTAL_TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_MS ?? 120_000);
const STARTUP_TIMEOUT_MS = 30_000;
const REVIVE_TIMEOUT_MS = 20_000;
const POLL_MS = 100;

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const log = (...a) => console.log(`[e2e ${new Date().toISOString().slice(11, 23)}]`, ...a);

async function loadAdapter() {
  const which = process.env.E2E_ADAPTER ?? 'mock';
  const file = ['mock', 'command', 'drmq'].includes(which) ? path.join(HERE, 'adapters', `${which}.mjs`) : path.resolve(which);
  return import(pathToFileURL(file).href);
}

/** Polls `probe` until it returns a truthy value or `ms` pass; returns it, or throws with `what`. */
async function until(what, ms, probe) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await probe();
    if (last) return last;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
}

/** What the page shows, read from its data-testid attributes. */
async function readPage(page) {
  return page.evaluate(() => {
    const cards = [...document.querySelectorAll('[data-testid^="broker-card-"]')].map((el) => ({
      id: Number(el.getAttribute('data-testid').slice('broker-card-'.length)),
      state: el.getAttribute('data-state'),
    }));
    const rows = [...document.querySelectorAll('[data-testid^="partition-row-"]')].map((el) => ({
      id: el.getAttribute('data-testid').slice('partition-row-'.length),
      leader: el.getAttribute('data-leader'),
      term: Number(el.getAttribute('data-term')),
    }));
    const tp = document.querySelector('[data-testid="throughput-total"]');
    const status = document.querySelector('[data-testid="cluster-status"]');
    return {
      cards,
      rows,
      throughput: tp ? Number(tp.getAttribute('data-value')) : NaN,
      throughputText: tp?.textContent ?? '',
      servedBy: status?.getAttribute('data-served-by') ?? '',
    };
  });
}

async function shot(page, name) {
  fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const file = path.join(SCREENSHOT_DIR, name);
  await page.screenshot({ path: file, fullPage: true });
  log(`screenshot ${file}`);
}

async function main() {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  const adapter = await loadAdapter();
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'drmq-e2e-chromium-'));
  let context = null;
  let started = false;
  const cleanup = async () => {
    await context?.close().catch(() => {});
    context = null;
    if (started) {
      started = false;
      await adapter.stop?.().catch((e) => log(`adapter stop failed: ${e.message}`));
    }
    fs.rmSync(userDataDir, { recursive: true, force: true });
  };
  const watchdog = setTimeout(async () => {
    console.error(`[e2e] FAIL: the whole run took over ${TOTAL_TIMEOUT_MS} ms`);
    await cleanup();
    process.exit(1);
  }, TOTAL_TIMEOUT_MS);
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.once(sig, async () => {
      await cleanup();
      process.exit(130);
    });
  }

  try {
    log(`adapter: ${adapter.name ?? 'custom'}`);
    started = true;
    const { url } = await adapter.start();
    log(`target: ${url}`);
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      viewport: { width: 1440, height: 1000 },
    });
    const page = context.pages()[0] ?? (await context.newPage());
    const consoleErrors = [];
    page.on('pageerror', (e) => consoleErrors.push(String(e)));
    await page.goto(url, { waitUntil: 'load', timeout: STARTUP_TIMEOUT_MS });

    // 1. everything up, partitions led, traffic flowing
    const before = await until(`${BROKERS_EXPECTED} brokers up, partitions with leaders, throughput > 0`, STARTUP_TIMEOUT_MS, async () => {
      const s = await readPage(page);
      const up = s.cards.filter((c) => c.state === 'up').length;
      const led = s.rows.length > 0 && s.rows.every((r) => r.leader !== '');
      return up === BROKERS_EXPECTED && s.cards.length === BROKERS_EXPECTED && led && s.throughput > 0 ? s : null;
    });
    log(`before: brokers ${before.cards.map((c) => `${c.id}:${c.state}`).join(' ')}, ${before.rows.length} partitions, throughput ${before.throughputText} records/s, page served by ${before.servedBy}`);
    await shot(page, 'before.png');

    // 2. kill a broker that leads partitions
    const victim = Number(process.env.E2E_KILL_BROKER ?? before.servedBy);
    const led = before.rows.filter((r) => Number(r.leader) === victim);
    if (!Number.isFinite(victim) || !before.cards.some((c) => c.id === victim)) throw new Error(`no broker ${victim} to kill`);
    if (led.length === 0) throw new Error(`broker ${victim} leads no partition; set E2E_KILL_BROKER to one that does`);
    log(`killing broker ${victim}, leader of ${led.map((r) => r.id).join(', ')}`);
    const t0 = Date.now();
    await adapter.killBroker(victim);
    const after = await until(`broker ${victim} down and new leaders for ${led.map((r) => r.id).join(', ')}`, DEADLINE_MS - (Date.now() - t0), async () => {
      const s = await readPage(page);
      const card = s.cards.find((c) => c.id === victim);
      const moved = led.every((old) => {
        const row = s.rows.find((r) => r.id === old.id);
        return row && row.leader !== '' && Number(row.leader) !== victim && row.term > old.term;
      });
      return card?.state === 'down' && moved ? s : null;
    });
    const elapsed = Date.now() - t0;
    const othersUp = after.cards.filter((c) => c.id !== victim).every((c) => c.state === 'up');
    if (!othersUp) throw new Error(`other brokers not all up after the kill: ${JSON.stringify(after.cards)}`);
    log(`after ${elapsed} ms: broker ${victim} down; new leaders ${led.map((old) => `${old.id}→${after.rows.find((r) => r.id === old.id).leader}`).join(', ')}`);
    await shot(page, 'after.png');

    // 3. it comes back
    if (adapter.reviveBroker) {
      await adapter.reviveBroker(victim);
      const r0 = Date.now();
      await until(`broker ${victim} up again`, REVIVE_TIMEOUT_MS, async () => {
        const s = await readPage(page);
        return s.cards.find((c) => c.id === victim)?.state === 'up' && s.cards.every((c) => c.state === 'up');
      });
      log(`broker ${victim} shown up again ${Date.now() - r0} ms after revive`);
      await new Promise((r) => setTimeout(r, 1500));
      await shot(page, 'revived.png');
    } else {
      log('adapter cannot revive; skipping the revive check');
    }
    if (consoleErrors.length) throw new Error(`page errors: ${consoleErrors.join('\n')}`);
    log(`PASS (down and new leader shown ${elapsed} ms after the kill; limit ${DEADLINE_MS} ms)`);
    return 0;
  } catch (e) {
    console.error(`[e2e] FAIL: ${e.message}`);
    try {
      const page = context?.pages()[0];
      if (page) await shot(page, 'failure.png');
    } catch {
      // the screenshot is a help, not the result
    }
    return 1;
  } finally {
    clearTimeout(watchdog);
    await cleanup();
  }
}

process.exitCode = await main();
