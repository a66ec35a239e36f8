import type { ClusterView } from '../data/store';
import { fmtCount } from '../format';

/** Partitions × brokers: who leads what, the followers' lag, the term; fresh leader changes glow. */
export function Topology({ view }: { view: ClusterView }) {
  const brokers = view.brokers.map((b) => b.id);
  const down = new Set(view.brokers.filter((b) => b.state !== 'up').map((b) => b.id));
  return (
    <section id="topology">
      <h2>Leader topology</h2>
      <p className="hint">
        <span className="chip lead">L</span> leader · <span className="chip follow">F</span> follower with its lag in Raft entries (leader's view) ·
        outlined: leader changed in the last 15 s · struck out: broker down
      </p>
      {view.partitions.length === 0 ? (
        <div className="empty">No partitions reported yet.</div>
      ) : (
        <div className="table-wrap">
          <table className="topology">
            <thead>
              <tr>
                <th>partition</th>
                <th>term</th>
                {brokers.map((id) => (
                  <th key={id} className={down.has(id) ? 'down' : ''}>
                    broker {id}
                  </th>
                ))}
                <th>change</th>
              </tr>
            </thead>
            <tbody>
              {view.partitions.map((p) => (
                <tr key={p.key} className={p.leader_changed_ms !== null ? 'changed' : ''} data-testid={`topology-row-${p.topic}-${p.partition}`} data-leader={p.leader ?? ''}>
                  <td className="mono">{p.key}</td>
                  <td className="num">{p.term}</td>
                  {brokers.map((id) => {
                    const r = p.replicas.find((x) => x.broker === id);
                    if (!r) return <td key={id} className="cell none" />;
                    const isLeader = p.leader === id;
                    const lag = r.lag_entries;
                    const cls = ['cell', isLeader ? 'lead' : 'follow', down.has(id) ? 'down' : '', !isLeader && lag !== null && lag > 1000 ? 'lagging' : ''].join(' ');
                    return (
                      <td key={id} className={cls} title={`match ${r.match_index ?? '?'} · log end ${r.log_end_offset ?? '?'}`}>
                        {isLeader ? 'L' : `F ${lag === null ? '' : fmtCount(lag, 0)}`}
                      </td>
                    );
                  })}
                  <td className="muted">{p.leader_changed_ms !== null ? `${p.previous_leader ?? '?'} → ${p.leader}` : p.leader === null ? 'electing' : !p.leader_up ? 'leader down' : ''}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
