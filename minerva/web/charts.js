// Time-series charts (uPlot on a canvas) that follow the container's width and the colour scheme.

import uPlot from './vendor/uPlot.esm.js';

const dark = window.matchMedia('(prefers-color-scheme: dark)');
const clock = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

/** The chart palette of the current colour scheme (from style.css). */
export function palette() {
  return [1, 2, 3, 4, 5, 6].map((i) => cssVar(`--chart-${i}`));
}

/** A chart of one or more series over time (x: Unix seconds) or steps; `data` as uPlot takes it. */
export class LiveChart {
  constructor(container, { series, format = (v) => String(v), time = true, height = 180, xLabel = null }) {
    this.container = container;
    this.series = series;
    this.format = format;
    this.time = time;
    this.height = height;
    this.xLabel = xLabel;
    this.data = [[], ...series.map(() => [])];
    this.plot = null;
    this.build();
    new ResizeObserver(() => this.resize()).observe(container);
    dark.addEventListener('change', () => this.build());
  }

  options() {
    const colors = palette();
    const text = cssVar('--text-muted');
    const grid = cssVar('--grid');
    const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, font: '12px system-ui, sans-serif' };
    return {
      width: Math.max(200, this.container.clientWidth),
      height: this.height,
      cursor: { drag: { x: false, y: false } },
      // A time axis spans at least a minute, so the first samples do not stretch across years.
      scales: { x: { time: this.time, ...(this.time ? { range: (u, min, max) => (max - min < 60 ? [max - 60, max] : [min, max]) } : {}) }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [
        { ...axis, ...(this.xLabel ? { label: this.xLabel, labelFont: axis.font } : {}),
          ...(this.time
            ? { space: 80, values: (u, ticks) => ticks.map((t) => clock.format(new Date(t * 1000))) }
            : { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] }) },
        { ...axis, size: 64, values: (u, ticks) => ticks.map((v) => this.format(v)) },
      ],
      series: [
        { label: this.time ? 'time' : (this.xLabel || 'x') },
        ...this.series.map((s, i) => ({
          label: s.label,
          stroke: colors[i % colors.length],
          fill: `${colors[i % colors.length]}22`,
          width: 2,
          points: { show: s.points ?? false, size: 6 },
          value: (u, v) => (v == null ? '' : this.format(v)),
        })),
      ],
    };
  }

  build() {
    this.plot?.destroy();
    this.plot = new uPlot(this.options(), this.data, this.container);
    this.describe();
  }

  resize() {
    const width = this.container.clientWidth;
    if (this.plot && width > 0 && Math.abs(width - this.plot.width) > 1) this.plot.setSize({ width, height: this.height });
  }

  /** New data: [xs, ...one array per series]. */
  setData(data) {
    this.data = data;
    this.plot.setData(data);
    this.describe();
  }

  /** Change the series (e.g. one per loaded model); rebuilds only when their labels changed. */
  setSeries(series, data) {
    const same = series.length === this.series.length && series.every((s, i) => s.label === this.series[i].label);
    this.series = series;
    this.data = data;
    if (same) this.setData(data);
    else this.build();
  }

  describe() {
    // For people using a screen reader, and for the tests: how many points are drawn and the largest.
    const values = this.data.slice(1).flat().filter((v) => typeof v === 'number' && Number.isFinite(v));
    this.container.dataset.points = String(values.length);
    this.container.dataset.max = String(values.length ? Math.max(...values) : 0);
    const latest = this.series.map((s, i) => {
      const column = this.data[i + 1] || [];
      const last = column.length ? column[column.length - 1] : null;
      return `${s.label}: ${last == null ? 'no data' : this.format(last)}`;
    });
    this.container.setAttribute('aria-label', `${this.container.dataset.title || 'chart'} — ${latest.join(', ')}`);
  }
}
