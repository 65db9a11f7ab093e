// Charts for query results and the dashboard: a uPlot line chart when there is a time axis,
// horizontal bars on a canvas of our own when there is a label column and numbers.

import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import {
  formatCompact,
  formatNumber,
  formatUtc,
  hasTimeName,
  isIntegerType,
  isNumericType,
  isTemporalType,
  isTextType,
  toEpochMs,
} from './format.js';

const MAX_SERIES = 8;
const MAX_BARS = 30;
// Identifier-like numeric columns (shard numbers, ids) are not quantities worth drawing.
const NOT_A_MEASURE = /(^|_)(shard|id|k)$/i;
const MIN_MS = Date.UTC(1990, 0, 1);
const MAX_MS = Date.UTC(2200, 0, 1);

// uPlot's time-axis formats with a 24-hour clock and ISO dates (its defaults are US 12-hour).
// Columns: smallest tick step in seconds, tick format, then what is added when the year, month,
// day, hour, minute or second rolls over, and 1 = append the rollover to the tick format.
const [S, M, H, D] = [1, 60, 3600, 86400];
const NL_DATE = '\n{YYYY}-{MM}-{DD}';
const TIME_AXIS = [
  [D * 365, '{YYYY}', null, null, null, null, null, null, 1],
  [D * 28, '{MMM}', '\n{YYYY}', null, null, null, null, null, 1],
  [D, '{MM}-{DD}', '\n{YYYY}', null, null, null, null, null, 1],
  [H, '{HH}:{mm}', NL_DATE, null, NL_DATE, null, null, null, 1],
  [M, '{HH}:{mm}', NL_DATE, null, NL_DATE, null, null, null, 1],
  [S, ':{ss}', `${NL_DATE} {HH}:{mm}`, null, `${NL_DATE} {HH}:{mm}`, null, '\n{HH}:{mm}', null, 1],
  [
    S / 1000,
    ':{ss}.{fff}',
    `${NL_DATE} {HH}:{mm}`,
    null,
    `${NL_DATE} {HH}:{mm}`,
    null,
    '\n{HH}:{mm}',
    null,
    1,
  ],
];

function cssVar(name, fallback) {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}

/** The palette, read from CSS so light and dark themes each get readable colours. */
export function palette() {
  return Array.from({ length: MAX_SERIES }, (_, i) => cssVar(`--series-${i}`, '#3b82f6'));
}

const asNumber = (v) =>
  v === null || v === undefined ? null : typeof v === 'bigint' ? Number(v) : Number(v);

function timeColumn(columns, rows) {
  const sample = (i) => rows.find((r) => r[i] !== null && r[i] !== undefined)?.[i];
  const plausible = (i) => {
    const ms = toEpochMs(sample(i));
    return ms !== null && ms > MIN_MS && ms < MAX_MS;
  };
  const temporal = columns.findIndex((c, i) => isTemporalType(c.type) && plausible(i));
  if (temporal >= 0) return temporal;
  return columns.findIndex((c, i) => isIntegerType(c.type) && hasTimeName(c.name) && plausible(i));
}

/**
 * Decides what chart a result deserves, or null for none. A time column (TIMESTAMP/DATE, or a
 * BIGINT named like `minute`/`ts` holding epoch ns) with numbers gives a line per numeric column,
 * or a line per label when there is also a text column (`minute, category, count` pivots by
 * category). Without a time column, a text column with a number gives bars.
 */
export function planChart(columns, rows) {
  if (!columns?.length || !rows?.length) return null;
  const t = timeColumn(columns, rows);
  const measures = columns
    .map((c, i) => i)
    .filter((i) => i !== t && isNumericType(columns[i].type) && !NOT_A_MEASURE.test(columns[i].name));
  if (!measures.length) return null;
  const label = columns.findIndex((c, i) => i !== t && isTextType(c.type));
  if (t >= 0)
    return label >= 0 ? pivotLines(columns, rows, t, label, measures[0]) : lines(columns, rows, t, measures);
  if (label >= 0 && rows.length > 1) return bars(columns, rows, label, measures[0]);
  return null;
}

function lines(columns, rows, t, measures) {
  const chosen = measures.slice(0, MAX_SERIES);
  const byX = new Map();
  let summed = false;
  for (const row of rows) {
    const ms = toEpochMs(row[t]);
    if (ms === null) continue;
    const seen = byX.get(ms);
    if (seen) summed = true;
    const sums = seen ?? chosen.map(() => null);
    chosen.forEach((c, j) => {
      const v = asNumber(row[c]);
      if (v !== null) sums[j] = (sums[j] ?? 0) + v;
    });
    byX.set(ms, sums);
  }
  const xs = [...byX.keys()].sort((a, b) => a - b);
  return {
    kind: 'line',
    x: xs.map((ms) => ms / 1000),
    series: chosen.map((c, j) => ({ label: columns[c].name, values: xs.map((ms) => byX.get(ms)[j]) })),
    xLabel: columns[t].name,
    note:
      `${chosen.map((c) => columns[c].name).join(', ')} by ${columns[t].name} (UTC)` +
      (summed ? `; rows with the same ${columns[t].name} are summed` : ''),
  };
}

function pivotLines(columns, rows, t, label, measure) {
  const cells = new Map();
  const totals = new Map();
  for (const row of rows) {
    const ms = toEpochMs(row[t]);
    const v = asNumber(row[measure]);
    if (ms === null || v === null) continue;
    const name = row[label] === null ? 'NULL' : String(row[label]);
    const key = `${ms}\u0000${name}`;
    cells.set(key, (cells.get(key) ?? 0) + v);
    totals.set(name, (totals.get(name) ?? 0) + Math.abs(v));
  }
  const names = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a) || a.localeCompare(b));
  const shown = names.slice(0, MAX_SERIES);
  const xs = [...new Set([...cells.keys()].map((k) => Number(k.split('\u0000')[0])))].sort((a, b) => a - b);
  return {
    kind: 'line',
    x: xs.map((ms) => ms / 1000),
    series: shown.map((name) => ({
      label: name,
      values: xs.map((ms) => cells.get(`${ms}\u0000${name}`) ?? null),
    })),
    xLabel: columns[t].name,
    pivoted: true,
    note:
      `${columns[measure].name} by ${columns[label].name}` +
      (names.length > shown.length ? `, top ${shown.length} of ${names.length}` : ''),
  };
}

function bars(columns, rows, label, measure) {
  const shown = rows.slice(0, MAX_BARS);
  return {
    kind: 'bar',
    labels: shown.map((r) => (r[label] === null ? 'NULL' : String(r[label]))),
    values: shown.map((r) => asNumber(r[measure]) ?? 0),
    valueLabel: columns[measure].name,
    note:
      `${columns[measure].name} by ${columns[label].name}` +
      (rows.length > shown.length ? `, first ${shown.length} of ${rows.length} rows` : ''),
  };
}

/**
 * A uPlot time-series chart that fills its container's width and follows it when resized. The
 * y axis starts at zero when all values are positive (counts and rates read honestly that way);
 * `xWindow()`, when given, fixes the x range to `[from, to]` seconds so a live chart scrolls.
 */
export class LineChart {
  constructor(container, { labels, height = 260, fill = false, xWindow = null, rightAxis = [] }) {
    this.container = container;
    this.labels = labels;
    const colors = palette();
    const axis = {
      stroke: cssVar('--muted', '#666'),
      grid: { stroke: cssVar('--grid', '#eee'), width: 1 },
      ticks: { stroke: cssVar('--grid', '#eee'), width: 1 },
      font: '12px system-ui, sans-serif',
    };
    const numbers = { size: 56, values: (_u, ticks) => ticks.map(formatCompact) };
    const options = {
      width: Math.max(container.clientWidth, 200),
      height,
      // The server speaks UTC; so do the axes and the tooltips in the table.
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
      scales: {
        x: { time: true, ...(xWindow ? { range: () => xWindow() } : {}) },
        y: { range: (_u, min, max) => yRange(min, max) },
        y2: { range: (_u, min, max) => yRange(min, max) },
      },
      cursor: { drag: { x: true, y: false } },
      legend: { live: true },
      series: [
        { label: 'time (UTC)', value: (_u, ts) => (ts === null ? '–' : formatUtc(ts * 1000)) },
        ...labels.map((label, i) => ({
          label: rightAxis.includes(i) ? `${label} (right axis)` : label,
          scale: rightAxis.includes(i) ? 'y2' : 'y',
          stroke: colors[i % colors.length],
          width: 2,
          fill: fill && labels.length === 1 ? `${colors[i % colors.length]}22` : undefined,
          value: (_u, v) => (v === null || v === undefined ? '–' : formatNumber(v)),
          // Dots while data is sparse, so a lone sample (a live chart's first) is visible at all.
          points: { show: sparse, size: 6 },
        })),
      ],
      axes: [
        { ...axis, values: TIME_AXIS, space: 60 },
        { ...axis, ...numbers },
        ...(rightAxis.length ? [{ ...axis, ...numbers, scale: 'y2', side: 1, grid: { show: false } }] : []),
      ],
    };
    this.plot = new uPlot(options, [[], ...labels.map(() => [])], container);
    this.observer = new ResizeObserver(() => {
      const width = Math.max(container.clientWidth, 200);
      if (width !== this.plot.width) this.plot.setSize({ width, height });
    });
    this.observer.observe(container);
  }

  /** Replaces the data: `x` in Unix seconds ascending, one array per series label. */
  setData(x, seriesValues) {
    this.plot.setData([x, ...seriesValues]);
  }

  destroy() {
    this.observer.disconnect();
    this.plot.destroy();
  }
}

function sparse(u, seriesIdx, idx0, idx1) {
  const values = u.data[seriesIdx];
  let present = 0;
  for (let i = idx0; i <= idx1 && present < 40; i += 1)
    if (values[i] !== null && values[i] !== undefined) present += 1;
  return present < 40;
}

function yRange(min, max) {
  if (min === null || max === null) return [0, 1];
  const low = min >= 0 ? 0 : min * 1.1;
  const high = max <= 0 ? 0 : max * 1.1;
  return low === high ? [low, low + 1] : [low, high];
}

/** Horizontal bars with their labels and values, drawn on a canvas sized to the container. */
export class BarChart {
  constructor(container, { labels, values, valueLabel = '' }) {
    this.container = container;
    this.canvas = document.createElement('canvas');
    this.canvas.className = 'bar-chart';
    this.canvas.setAttribute('role', 'img');
    this.canvas.setAttribute('aria-label', `bar chart of ${valueLabel}`);
    container.append(this.canvas);
    this.update(labels, values);
    this.observer = new ResizeObserver(() => this.draw());
    this.observer.observe(container);
  }

  update(labels, values) {
    this.labels = labels;
    this.values = values;
    this.draw();
  }

  draw() {
    const rowHeight = 24;
    const width = Math.max(this.container.clientWidth, 240);
    const height = this.labels.length * rowHeight + 8;
    if (this.drawn === `${width}x${height}:${this.values}`) return;
    this.drawn = `${width}x${height}:${this.values}`;
    const ratio = window.devicePixelRatio || 1;
    const canvas = this.canvas;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    const ctx = canvas.getContext('2d');
    ctx.scale(ratio, ratio);
    ctx.font = '12px system-ui, sans-serif';
    ctx.textBaseline = 'middle';
    const labelWidth = Math.min(
      width * 0.35,
      Math.max(...this.labels.map((l) => ctx.measureText(l).width)) + 12,
    );
    const valueWidth = Math.max(...this.values.map((v) => ctx.measureText(formatCompact(v)).width)) + 12;
    const barSpace = Math.max(width - labelWidth - valueWidth, 20);
    const top = Math.max(...this.values.map((v) => Math.abs(v)), 1);
    const [text, muted] = [cssVar('--text', '#222'), cssVar('--muted', '#666')];
    const bar = palette()[0];
    this.labels.forEach((label, i) => {
      const y = 4 + i * rowHeight;
      const middle = y + rowHeight / 2;
      ctx.fillStyle = text;
      ctx.textAlign = 'right';
      ctx.fillText(clip(ctx, label, labelWidth - 12), labelWidth - 8, middle);
      const length = (Math.abs(this.values[i]) / top) * barSpace;
      ctx.fillStyle = bar;
      ctx.globalAlpha = 0.85;
      roundRect(ctx, labelWidth, y + 4, Math.max(length, 1), rowHeight - 8, 3);
      ctx.globalAlpha = 1;
      ctx.fillStyle = muted;
      ctx.textAlign = 'left';
      ctx.fillText(formatCompact(this.values[i]), labelWidth + length + 6, middle);
    });
  }

  destroy() {
    this.observer.disconnect();
    this.canvas.remove();
  }
}

function clip(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let end = text.length;
  while (end > 1 && ctx.measureText(`${text.slice(0, end)}…`).width > width) end -= 1;
  return `${text.slice(0, end)}…`;
}

function roundRect(ctx, x, y, w, h, r) {
  ctx.beginPath();
  ctx.roundRect(x, y, w, h, Math.min(r, w / 2));
  ctx.fill();
}

/**
 * Series too far in magnitude from the first to share its axis (`events` next to `sum(value)`):
 * they get a second axis on the right instead of a flat line along the bottom.
 */
export function rightAxisSeries(series) {
  const peak = (values) => Math.max(0, ...values.filter((v) => v !== null).map(Math.abs));
  const first = peak(series[0]?.values ?? []);
  if (series.length < 2 || first === 0) return [];
  return series
    .map((s, i) => [i, peak(s.values)])
    .filter(([i, p]) => i > 0 && p > 0 && (p / first > 20 || first / p > 20))
    .map(([i]) => i);
}

/** Draws a plan from `planChart` into `container`; returns an object with `destroy()`. */
export function drawPlan(container, plan) {
  if (plan.kind === 'bar') return new BarChart(container, plan);
  const chart = new LineChart(container, {
    labels: plan.series.map((s) => s.label),
    fill: true,
    rightAxis: plan.kind === 'line' && !plan.pivoted ? rightAxisSeries(plan.series) : [],
  });
  chart.setData(
    plan.x,
    plan.series.map((s) => s.values),
  );
  return chart;
}
