import { useMemo, useSyncExternalStore } from 'react';
import type { ClusterClient } from './data/store';
import { Overview } from './views/Overview';
import { Topology } from './views/Topology';
import { Cores } from './views/Cores';
import { Partitions } from './views/Partitions';
import { Disk } from './views/Disk';
import { Leases } from './views/Leases';
import { Events } from './views/Events';

const SECTIONS = [
  ['overview', 'Overview'],
  ['topology', 'Leaders'],
  ['cores', 'Cores'],
  ['partitions', 'Partitions'],
  ['disk', 'Disk'],
  ['leases', 'Consumers'],
  ['events', 'Events'],
] as const;

export function App({ client }: { client: ClusterClient }) {
  const view = useSyncExternalStore(client.subscribe, client.getSnapshot);
  const throughput = useMemo(() => view.throughput.data(), [view]);
  const up = view.brokers.filter((b) => b.state === 'up').length;
  return (
    <div className="app">
      <header className="top">
        <div className="brand">
          DRMQ <span className="muted">cluster</span>
        </div>
        <nav>
          {SECTIONS.map(([id, label]) => (
            <a key={id} href={`#${id}`}>
              {label}
            </a>
          ))}
        </nav>
        <div className="status" data-testid="cluster-status" data-served-by={view.served_by ?? ""} data-controller={view.controller ?? ""}>
          <span className={up === view.brokers.length && up > 0 ? 'ok' : 'warn'}>
            {up}/{view.brokers.length} brokers up
          </span>
          {view.served_by !== null && <span className="muted"> · page from broker {view.served_by}</span>}
        </div>
      </header>
      {view.list_error && (
        <div className="banner" data-testid="list-error">
          Cannot load the broker list: {view.list_error} (retrying)
        </div>
      )}
      <main>
        <Overview view={view} throughput={throughput} />
        <Topology view={view} />
        <Cores view={view} />
        <Partitions view={view} />
        <Disk view={view} />
        <Leases view={view} />
        <Events view={view} />
      </main>
    </div>
  );
}
