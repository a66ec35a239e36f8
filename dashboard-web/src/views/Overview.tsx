import type uPlot from 'uplot';
import type { ClusterView } from '../data/store';
import { fmtBytes, fmtCount, fmtDuration } from '../format';
import { Chart } from './Chart';

const perSec = (v: number) => `${fmtCount(v)}/s`;
const bytesPerSec = (v: number) => `${fmtBytes(v)}/s`;

export function Overview({ view, throughput }: { view: ClusterView; throughput: uPlot.AlignedData }) {
  const t = view.totals;
  const up = view.brokers.filter((b) => b.state === 'up');
  const partitions = view.partitions.length;
  const leaderless = view.partitions.filter((p) => p.leader === null || !p.leader_up).length;
  const conns = up.reduce((n, b) => n + (b.sample?.shards.reduce((m, s) => m + s.connections, 0) ?? 0), 0);
  const recordsTotal = (t.records_in_total ?? 0) + (t.records_out_total ?? 0);
  return (
    <section id="overview">
      <h2>Cluster</h2>
      <div className="cards">
        {view.brokers.map((b) => {
          const shown = b.state === 'up' ? 'up' : b.state === 'down' ? 'down' : 'connecting';
          const s = b.sample;
          return (
            <div key={b.id} className={`card broker ${shown}`} data-testid={`broker-card-${b.id}`} data-state={shown}>
              <div className="card-head">
                <span className="dot" />
                <strong>broker {b.id}</strong>
                {b.is_controller && <span className="tag" data-testid={`controller-${b.id}`}>controller</span>}
                {view.served_by === b.id && <span className="tag dim">this page</span>}
              </div>
              <div className="kv">
                <span>client</span>
                <span className="mono">{b.client}</span>
                <span>state</span>
                <span>{shown === 'up' ? 'up' : shown === 'down' ? `down — ${b.reason}` : 'connecting…'}</span>
                <span>uptime</span>
                <span>{s && b.state === 'up' ? fmtDuration(s.uptime_ms) : '–'}</span>
                <span>shards</span>
                <span>{s ? s.shards.length : '–'}</span>
                <span>leads</span>
                <span>{b.leads} partitions</span>
                <span>in / out</span>
                <span>
                  {b.state === 'up' ? `${fmtCount(b.rates.records_in_total)} / ${fmtCount(b.rates.records_out_total)} rec/s` : '–'}
                </span>
              </div>
            </div>
          );
        })}
      </div>
      <div className="stats">
        <Stat label="records/s (in + out)" value={fmtCount(recordsTotal)} testid="throughput-total" raw={recordsTotal} />
        <Stat label="records in/s" value={fmtCount(t.records_in_total)} />
        <Stat label="records out/s" value={fmtCount(t.records_out_total)} />
        <Stat label="bytes in/s" value={fmtBytes(t.bytes_in_total)} />
        <Stat label="bytes out/s" value={fmtBytes(t.bytes_out_total)} />
        <Stat label="errors/s" value={fmtCount(t.errors)} warn={(t.errors ?? 0) > 0} />
        <Stat label="controller" value={view.controller === null ? 'none' : `broker ${view.controller}`} testid="controller" warn={view.controller === null} />
        <Stat label="partitions" value={String(partitions)} />
        <Stat label="without a live leader" value={String(leaderless)} warn={leaderless > 0} testid="leaderless" />
        <Stat label="client connections" value={String(conns)} />
      </div>
      <div className="charts2">
        <div className="panel">
          <h3>Records per second</h3>
          <Chart
            testid="chart-records"
            data={[throughput[0], throughput[1], throughput[2]]}
            series={[
              { label: 'in', color: '#4fb3ff', fmt: perSec },
              { label: 'out', color: '#9d7bff', fmt: perSec },
            ]}
          />
        </div>
        <div className="panel">
          <h3>Bytes per second</h3>
          <Chart
            testid="chart-bytes"
            data={[throughput[0], throughput[3], throughput[4]]}
            series={[
              { label: 'in', color: '#3ccf91', fmt: bytesPerSec },
              { label: 'out', color: '#f0b429', fmt: bytesPerSec },
            ]}
          />
        </div>
      </div>
    </section>
  );
}

function Stat({ label, value, testid, raw, warn }: { label: string; value: string; testid?: string; raw?: number; warn?: boolean }) {
  return (
    <div className={`stat${warn ? ' warn' : ''}`}>
      <div className="stat-value" data-testid={testid} data-value={raw}>
        {value}
      </div>
      <div className="stat-label">{label}</div>
    </div>
  );
}
