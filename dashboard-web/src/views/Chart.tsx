// A uPlot time-series chart that follows its container's width.
import { useEffect, useRef } from 'react';
import uPlot from 'uplot';

export interface ChartSeries {
  label: string;
  color: string;
  /** How to show a value on the axis/legend. */
  fmt?: (v: number) => string;
  scale?: string;
}

interface Props {
  data: uPlot.AlignedData;
  series: ChartSeries[];
  height?: number;
  /** Scales: `y` by default; a second one for series with `scale: 'y2'`. */
  y2?: boolean;
  yRange?: [number, number];
  testid?: string;
}

export function Chart({ data, series, height = 180, y2 = false, yRange, testid }: Props) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const shape = series.map((s) => `${s.label}:${s.scale ?? 'y'}`).join('|');

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const axisFmt = (scale: string) => {
      const s = series.find((x) => (x.scale ?? 'y') === scale);
      return (_u: uPlot, ticks: number[]) => ticks.map((t) => (s?.fmt ? s.fmt(t) : String(t)));
    };
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height,
      legend: { show: true, live: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: true },
        y: yRange ? { range: yRange } : { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] },
        ...(y2 ? { y2: { range: (_u: uPlot, _min: number, max: number) => [0, max > 0 ? max * 1.1 : 1] as [number, number] } } : {}),
      },
      axes: [
        { stroke: '#8b93a7', grid: { stroke: '#262b36' }, ticks: { stroke: '#262b36' } },
        { stroke: '#8b93a7', grid: { stroke: '#262b36' }, ticks: { stroke: '#262b36' }, values: axisFmt('y'), size: 60 },
        ...(y2 ? [{ side: 1, scale: 'y2', stroke: '#8b93a7', grid: { show: false }, values: axisFmt('y2'), size: 70 }] : []),
      ],
      series: [
        {},
        ...series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: 1.5,
          scale: s.scale ?? 'y',
          spanGaps: false,
          value: (_u: uPlot, v: number | null) => (v === null ? '–' : s.fmt ? s.fmt(v) : String(v)),
        })),
      ],
    };
    const u = new uPlot(opts, data, el);
    plot.current = u;
    const ro = new ResizeObserver(() => u.setSize({ width: Math.max(200, el.clientWidth), height }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
    // Rebuilt only when the series change; data updates go through setData.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [shape, height, y2]);

  useEffect(() => {
    plot.current?.setData(data);
  }, [data]);

  return <div className="chart" ref={box} data-testid={testid} />;
}
