import { useState } from 'react';
import type { ClusterView, PartitionView } from '../data/store';
import { fmtBytes, fmtCount } from '../format';

type SortKey = 'key' | 'leader' | 'term' | 'lag' | 'hw' | 'start' | 'end' | 'size' | 'rate';

const COLUMNS: [SortKey, string][] = [
  ['key', 'partition'],
  ['leader', 'leader'],
  ['term', 'term'],
  ['lag', 'max lag'],
  ['hw', 'high watermark'],
  ['start', 'log start'],
  ['end', 'log end'],
  ['size', 'size'],
  ['rate', 'records/s'],
];

function maxLag(p: PartitionView): number | null {
  const lags = p.replicas.map((r) => r.lag_entries).filter((x): x is number => x !== null);
  return lags.length ? Math.max(...lags) : null;
}

function sortValue(p: PartitionView, k: SortKey): number | string {
  switch (k) {
    case 'key':
      return `${p.topic}\u0000${String(p.partition).padStart(8, '0')}`;
    case 'leader':
      return p.leader ?? -1;
    case 'term':
      return p.term;
    case 'lag':
      return maxLag(p) ?? -1;
    case 'hw':
      return p.high_watermark;
    case 'start':
      return p.log_start_offset;
    case 'end':
      return p.log_end_offset;
    case 'size':
      return p.size_bytes;
    case 'rate':
      return p.records_per_sec ?? -1;
  }
}

/** Sorts partitions by a column; ties by topic and number so the order is stable. */
export function sortPartitions(ps: PartitionView[], key: SortKey, desc: boolean): PartitionView[] {
  return ps.slice().sort((a, b) => {
    const va = sortValue(a, key);
    const vb = sortValue(b, key);
    const c = va < vb ? -1 : va > vb ? 1 : sortValue(a, 'key') < sortValue(b, 'key') ? -1 : 1;
    return desc ? -c : c;
  });
}

export function Partitions({ view }: { view: ClusterView }) {
  const [filter, setFilter] = useState('');
  const [sort, setSort] = useState<{ key: SortKey; desc: boolean }>({ key: 'key', desc: false });
  const f = filter.trim().toLowerCase();
  const rows = sortPartitions(
    view.partitions.filter((p) => !f || p.key.toLowerCase().includes(f) || (f.startsWith('leader:') && String(p.leader) === f.slice(7))),
    sort.key,
    sort.desc,
  );
  const topics = new Set(view.partitions.map((p) => p.topic)).size;
  return (
    <section id="partitions">
      <h2>
        Topics and partitions <span className="muted">({topics} topics, {view.partitions.length} partitions)</span>
      </h2>
      <input className="filter" placeholder="filter: topic, topic/partition, leader:2" value={filter} onChange={(e) => setFilter(e.target.value)} data-testid="partition-filter" />
      <div className="table-wrap">
        <table className="grid" data-testid="partitions-table">
          <thead>
            <tr>
              {COLUMNS.map(([k, label]) => (
                <th
                  key={k}
                  className={`sortable${sort.key === k ? ' sorted' : ''}`}
                  onClick={() => setSort((s) => ({ key: k, desc: s.key === k ? !s.desc : k !== 'key' }))}
                  data-testid={`sort-${k}`}
                >
                  {label} {sort.key === k ? (sort.desc ? '▼' : '▲') : ''}
                </th>
              ))}
              <th>replicas</th>
              <th>snapshot</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((p) => {
              const lag = maxLag(p);
              return (
                <tr
                  key={p.key}
                  data-testid={`partition-row-${p.topic}-${p.partition}`}
                  data-leader={p.leader ?? ''}
                  data-term={p.term}
                  className={p.leader_changed_ms !== null ? 'changed' : p.leader === null || !p.leader_up ? 'bad' : ''}
                >
                  <td className="mono">{p.key}</td>
                  <td>{p.leader === null ? <span className="warn-text">none</span> : p.leader_up ? p.leader : <span className="warn-text">{p.leader} (down)</span>}</td>
                  <td className="num">{p.term}</td>
                  <td className={`num${lag !== null && lag > 1000 ? ' warn-text' : ''}`}>{lag === null ? '–' : fmtCount(lag, 0)}</td>
                  <td className="num">{fmtCount(p.high_watermark)}</td>
                  <td className="num">{fmtCount(p.log_start_offset)}</td>
                  <td className="num">{fmtCount(p.log_end_offset)}</td>
                  <td className="num">{fmtBytes(p.size_bytes)}</td>
                  <td className="num">{fmtCount(p.records_per_sec)}</td>
                  <td className="mono">
                    {p.replicas.map((r) => (
                      <span key={r.broker} className={`rep${r.broker === p.leader ? ' lead' : ''}${r.up ? '' : ' down'}`}>
                        {r.broker}
                      </span>
                    ))}
                  </td>
                  <td>
                    {p.snapshot_transfer
                      ? `→ ${p.snapshot_transfer.to}: ${Math.round((100 * p.snapshot_transfer.bytes_sent) / Math.max(1, p.snapshot_transfer.bytes_total))} % at ${fmtBytes(p.snapshot_transfer.bytes_per_sec)}/s`
                      : ''}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
    </section>
  );
}
