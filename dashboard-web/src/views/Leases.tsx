import type { ClusterView } from '../data/store';
import { fmtDuration } from '../format';

export function Leases({ view }: { view: ClusterView }) {
  return (
    <section id="leases">
      <h2>Consumer groups</h2>
      {view.groups.length === 0 ? (
        <div className="empty" data-testid="leases-empty">
          No consumer groups yet. Members and their partition leases appear here once clients join groups.
        </div>
      ) : (
        <div className="table-wrap">
          <table className="grid" data-testid="leases-table">
            <thead>
              <tr>
                <th>group</th>
                <th>member</th>
                <th>generation</th>
                <th>partitions</th>
                <th>lease expires in</th>
                <th>coordinator</th>
              </tr>
            </thead>
            <tbody>
              {view.groups.map((g) => {
                const left = g.lease_expires_ms - view.now_ms;
                return (
                  <tr key={`${g.group}/${g.member}`}>
                    <td>{g.group}</td>
                    <td className="mono">{g.member}</td>
                    <td className="num">{g.generation}</td>
                    <td className="mono">{g.partitions.map((p) => `${p.topic}/${p.partition}`).join(' ')}</td>
                    <td className={left < 2000 ? 'warn-text' : ''}>{left > 0 ? fmtDuration(left) : 'expired'}</td>
                    <td>{g.coordinator}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
      {view.group_lag.length > 0 && (
        <div className="table-wrap">
          <table className="grid" data-testid="group-lag-table">
            <thead>
              <tr>
                <th>group</th>
                <th>generation</th>
                <th>members</th>
                <th>lag</th>
                <th>lag per partition (topic/partition: committed → high watermark)</th>
              </tr>
            </thead>
            <tbody>
              {view.group_lag.map((g) => (
                <tr key={g.group}>
                  <td>{g.group}</td>
                  <td className="num">{g.generation}</td>
                  <td className="num">{g.members}</td>
                  <td className="num">{g.lag ?? '-'}</td>
                  <td className="mono">
                    {g.partitions
                      .map((p) => `${p.topic}/${p.partition}: ${p.committed} → ${p.high_watermark ?? '?'} (${p.lag ?? '-'})`)
                      .join('  ')}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
