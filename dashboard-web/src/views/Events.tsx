import { useState } from 'react';
import type { ClusterView } from '../data/store';
import { fmtTime } from '../format';

const SHOWN_MAX = 200;

export function Events({ view }: { view: ClusterView }) {
  const [onlyBroker, setOnlyBroker] = useState(false);
  const events = view.events.filter((e) => !onlyBroker || e.source === 'broker').slice(0, SHOWN_MAX);
  return (
    <section id="events">
      <h2>
        Events{' '}
        <label className="muted small">
          <input type="checkbox" checked={onlyBroker} onChange={(e) => setOnlyBroker(e.target.checked)} /> brokers' events only
        </label>
      </h2>
      {events.length === 0 ? (
        <div className="empty">No events since this page opened.</div>
      ) : (
        <ol className="feed" data-testid="event-feed">
          {events.map((e) => (
            <li key={e.id} className={`ev ${e.kind}`} data-kind={e.kind}>
              <span className="mono muted">{fmtTime(e.ts_ms)}</span>
              <span className={`kind ${e.source}`}>{e.kind.replace(/^dashboard_/, '')}</span>
              <span className="muted">{e.source === 'dashboard' ? 'page' : `broker ${e.broker}`}</span>
              <span>{e.text}</span>
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}
