import { laneKey, type BrokerView, type ClusterView } from '../data/store';
import type { PeerLane } from '../data/protocol';
import { fmtCount, fmtUs, heat } from '../format';
import { Chart } from './Chart';

/** A core is hot above this busy fraction. */
const HOT_BUSY = 0.85;
/** A lane this full (frames) is backing up. */
const LANE_QUEUED_WARN = 64;
/** Task-queue latency at which a core counts as starving its tasks. */
const STARVED_US = 5000;

const SHARD_COLORS = ['#4fb3ff', '#3ccf91', '#f0b429', '#ff6b6b', '#9d7bff', '#2ec4b6', '#ff9f1c', '#e56bff'];

/** The thread-per-core view: every core of every broker, and every lane to every peer. */
export function Cores({ view }: { view: ClusterView }) {
  return (
    <section id="cores">
      <h2>Cores and peer lanes</h2>
      <p className="hint">
        One cell per shard (pinned core), coloured by busy fraction; red = hot (&gt; {Math.round(HOT_BUSY * 100)} %). Task-queue latency is the longest a
        runnable task waited for its core in the last second. Peer lanes: one cell per shard × peer × lane; red = down or dropping frames, amber = queue
        building up.
      </p>
      <div className="cores">
        {view.brokers.map((b) => (
          <BrokerCores key={b.id} b={b} view={view} />
        ))}
      </div>
    </section>
  );
}

function laneState(l: PeerLane, dropping: boolean): 'down' | 'drop' | 'busy' | 'ok' {
  if (!l.up) return 'down';
  if (dropping) return 'drop';
  if (l.frames_queued >= LANE_QUEUED_WARN) return 'busy';
  return 'ok';
}

function BrokerCores({ b, view }: { b: BrokerView; view: ClusterView }) {
  const s = b.sample;
  const live = b.state === 'up';
  const busy = view.busy.get(b.id);
  const peers = [...new Set(s?.shards.flatMap((sh) => sh.peer_lanes.map((l) => l.peer)) ?? [])].sort((x, y) => x - y);
  return (
    <div className={`panel core-panel ${live ? '' : 'stale'}`} data-testid={`cores-${b.id}`}>
      <h3>
        broker {b.id} {live ? '' : <span className="warn-text">(down — last known)</span>}
      </h3>
      {!s ? (
        <div className="empty">No sample yet.</div>
      ) : (
        <>
          <div className="heat-strip">
            {s.shards.map((sh) => {
              const hot = sh.busy_fraction > HOT_BUSY;
              const starved = sh.task_queue_latency_us_max > STARVED_US;
              return (
                <div
                  key={sh.shard}
                  className={`heat-cell${hot ? ' hot' : ''}${starved ? ' starved' : ''}`}
                  style={{ background: heat(live ? sh.busy_fraction : null) }}
                  data-testid={`core-${b.id}-${sh.shard}`}
                  data-busy={sh.busy_fraction}
                  title={`shard ${sh.shard}: busy ${(sh.busy_fraction * 100).toFixed(0)} %, task queue ${fmtUs(sh.task_queue_latency_us_max)}, p99 produce ${fmtUs(sh.produce_latency_us_p99)}, ${sh.connections} connections`}
                >
                  <div className="heat-top">core {sh.shard}</div>
                  <div className="heat-big">{(sh.busy_fraction * 100).toFixed(0)}%</div>
                  <div className="heat-sub">q {fmtUs(sh.task_queue_latency_us_max)}</div>
                  <div className="heat-sub">p99 {fmtUs(sh.produce_latency_us_p99)}</div>
                  <div className="heat-sub">{sh.connections} conn</div>
                </div>
              );
            })}
          </div>
          {peers.length > 0 && (
            <table className="lanes">
              <thead>
                <tr>
                  <th>lanes</th>
                  {s.shards.map((sh) => (
                    <th key={sh.shard}>core {sh.shard}</th>
                  ))}
                </tr>
              </thead>
              <tbody>
                {peers.map((peer) => (
                  <tr key={peer}>
                    <td>→ broker {peer}</td>
                    {s.shards.map((sh) => (
                      <td key={sh.shard}>
                        <div className="lane-pair">
                        {(['control', 'bulk'] as const).map((lane) => {
                          const l = sh.peer_lanes.find((x) => x.peer === peer && x.lane === lane);
                          if (!l) return <span key={lane} className="lane none" />;
                          const dropping = b.dropping_lanes.has(laneKey(sh.shard, peer, lane));
                          const st = live ? laneState(l, dropping) : 'stale';
                          return (
                            <span
                              key={lane}
                              className={`lane ${st}`}
                              data-testid={`lane-${b.id}-${sh.shard}-${peer}-${lane}`}
                              data-lane-state={st}
                              title={`${lane} lane to broker ${peer}: ${l.up ? 'up' : 'down'}, ${l.frames_queued} queued, ${fmtCount(l.frames_dropped_total)} dropped, ${l.reconnects_total} reconnects`}
                            >
                              {lane === 'control' ? 'c' : 'b'} {l.frames_queued}
                            </span>
                          );
                        })}
                        </div>
                      </td>
                    ))}
                  </tr>
                ))}
              </tbody>
            </table>
          )}
          {busy && busy.length > 1 && (
            <Chart
              height={120}
              yRange={[0, 1]}
              data={busy.data()}
              series={busy.names.map((n, i) => ({ label: n, color: SHARD_COLORS[i % SHARD_COLORS.length], fmt: (v: number) => `${Math.round(v * 100)}%` }))}
            />
          )}
        </>
      )}
    </div>
  );
}
