// Time series kept in the page: a fixed window of points, oldest dropped.

/** Charts keep the last five minutes. */
export const HISTORY_WINDOW_MS = 5 * 60 * 1000;
/** One point a second for the window, plus slack for late ticks. */
export const HISTORY_POINTS_MAX = 320;

/** Several series sharing one time axis, in the column layout uPlot takes. */
export class SeriesBuffer {
  private ts: number[] = [];
  private cols: (number | null)[][];

  constructor(
    readonly names: string[],
    private readonly windowMs = HISTORY_WINDOW_MS,
    private readonly pointsMax = HISTORY_POINTS_MAX,
  ) {
    this.cols = names.map(() => []);
  }

  /** Appends a point at `tsMs`; drops points older than the window or past the cap. */
  push(tsMs: number, values: (number | null)[]): void {
    if (values.length !== this.cols.length) throw new Error(`expected ${this.cols.length} values, got ${values.length}`);
    this.ts.push(tsMs);
    values.forEach((v, i) => this.cols[i].push(v));
    let drop = 0;
    while (drop < this.ts.length && this.ts[drop] < tsMs - this.windowMs) drop += 1;
    drop = Math.max(drop, this.ts.length - this.pointsMax);
    if (drop > 0) {
      this.ts.splice(0, drop);
      for (const c of this.cols) c.splice(0, drop);
    }
  }

  get length(): number {
    return this.ts.length;
  }

  /** `[x (seconds), ...series]`, as uPlot wants it (fresh arrays). */
  data(): [number[], ...(number | null)[][]] {
    return [this.ts.map((t) => t / 1000), ...this.cols.map((c) => c.slice())];
  }

  latest(name: string): number | null {
    const i = this.names.indexOf(name);
    if (i < 0 || this.ts.length === 0) return null;
    return this.cols[i][this.cols[i].length - 1];
  }
}
