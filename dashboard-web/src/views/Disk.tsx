import type { ClusterView } from '../data/store';
import { fmtBytes } from '../format';

/** Each broker's data disk: used by DRMQ, free, the floor below which appends stop, the byte budget. */
export function Disk({ view }: { view: ClusterView }) {
  return (
    <section id="disk">
      <h2>Disk</h2>
      <div className="disks">
        {view.brokers.map((b) => {
          const d = b.sample?.disk;
          if (!d) return null;
          const total = d.used_bytes + d.free_bytes;
          const pct = (x: number) => `${Math.max(0, Math.min(100, (100 * x) / Math.max(1, total)))}%`;
          const nearFloor = d.free_bytes < d.floor_bytes * 2;
          return (
            <div key={b.id} className={`panel disk${b.state === 'up' ? '' : ' stale'}`} data-testid={`disk-${b.id}`} data-full={d.full}>
              <h3>
                broker {b.id} {d.full && <span className="tag bad">DISK FULL</span>}
              </h3>
              <div className="bar">
                <div className="bar-used" style={{ width: pct(d.used_bytes) }} />
                <div className="bar-floor" style={{ left: `calc(100% - ${pct(d.floor_bytes)})` }} title="free-space floor" />
                {d.budget_bytes !== null && <div className="bar-budget" style={{ left: pct(d.budget_bytes) }} title="byte budget" />}
              </div>
              <div className="kv">
                <span>DRMQ data</span>
                <span>{fmtBytes(d.used_bytes)}</span>
                <span>free</span>
                <span className={nearFloor ? 'warn-text' : ''}>{fmtBytes(d.free_bytes)}</span>
                <span>floor</span>
                <span>{fmtBytes(d.floor_bytes)}</span>
                <span>budget</span>
                <span>{d.budget_bytes === null ? 'none' : `${fmtBytes(d.budget_bytes)} (${Math.round((100 * d.used_bytes) / Math.max(1, d.budget_bytes))} % used)`}</span>
              </div>
            </div>
          );
        })}
      </div>
    </section>
  );
}
