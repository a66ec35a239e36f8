// One line of text per event frame (docs/TELEMETRY.md, "event" frame).
import type { EventFrame } from './protocol';

function where(f: EventFrame): string {
  return f.topic === null || f.topic === undefined ? 'controller' : `${String(f.topic)}/${String(f.partition)}`;
}

function bytes(n: unknown): string {
  const v = Number(n);
  if (!Number.isFinite(v)) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let x = v;
  while (x >= 1024 && i < units.length - 1) {
    x /= 1024;
    i += 1;
  }
  return `${x.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function describeEvent(f: EventFrame): string {
  switch (f.kind) {
    case 'leader_changed':
      return `${where(f)}: leader ${String(f.previous_leader ?? '?')} → ${String(f.leader)} (term ${String(f.term)})`;
    case 'election_started':
      return `${where(f)}: broker ${String(f.candidate)} started an election for term ${String(f.term)}`;
    case 'broker_up':
      return `broker ${f.broker} sees broker ${String(f.peer)} up`;
    case 'broker_down':
      return `broker ${f.broker} sees broker ${String(f.peer)} down`;
    case 'disk_full':
      return `broker ${f.broker}: disk full (${bytes(f.free_bytes)} free, floor ${bytes(f.floor_bytes)}); appends refused`;
    case 'disk_ok':
      return `broker ${f.broker}: disk space back (${bytes(f.free_bytes)} free)`;
    case 'snapshot_started':
      return `${where(f)}: snapshot to broker ${String(f.to)} started (${bytes(f.bytes_total)})`;
    case 'snapshot_finished':
      return `${where(f)}: snapshot to broker ${String(f.to)} ${f.ok === false ? 'abandoned' : 'finished'} (${bytes(f.bytes_total)} in ${String(f.duration_ms)} ms)`;
    case 'topic_created':
      return `topic ${String(f.topic)} created: ${String(f.partitions)} partitions × ${String(f.replication_factor)} replicas`;
    case 'topic_deleted':
      return `topic ${String(f.topic)} deleted`;
    case 'group_rebalanced': {
      const why = f.why === 'expired' ? 'lease expired' : String(f.why);
      return `group ${String(f.group)}: member ${String(f.member)} ${why}; generation ${String(f.generation)}, ${String(f.members)} member(s)`;
    }
    default:
      return `${f.kind}: ${JSON.stringify(f)}`;
  }
}
