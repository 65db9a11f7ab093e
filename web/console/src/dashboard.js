// The dashboard: this node's ingest rate from /v1/stats deltas, events per category from the
// minute rollups, top producers from /v1/topk, and the cluster map with each node's health.

import './style.css';
import { getCluster, getCore, getStats, newQueryId, runSql } from './api.js';
import { LineChart, planChart } from './chart.js';
import { formatBytes, formatCompact } from './format.js';
import { CATEGORIES_SQL } from './panels.js';
import { el } from './results.js';
import { installTokenPrompt } from './token.js';

const STATS_EVERY_MS = 2_000;
const SLOW_EVERY_MS = 10_000;
const CLUSTER_EVERY_MS = 5_000;
const RATE_WINDOW = 150; // samples kept: five minutes at one per 2 s
const MINUTE_NS = 60_000_000_000n;

const $ = (selector) => document.querySelector(selector);

/** Runs `task` now and then every `ms`, never overlapping itself, skipping while the tab is hidden. */
function every(ms, task) {
  let busy = false;
  const tick = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      await task();
    } finally {
      busy = false;
    }
  };
  tick();
  setInterval(tick, ms);
  return tick;
}

function setLive(ok) {
  const live = $('#live');
  live.dataset.state = ok ? 'live' : 'offline';
  live.textContent = ok ? 'live' : 'offline';
}

// ---- ingest rate -------------------------------------------------------------------------------

const samples = []; // {t: seconds, total}
let rateChart = null;

function formatUptime(seconds) {
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

/** Events per second between consecutive samples; null across a restart (the total went down). */
export function rates(points) {
  return points.map((p, i) => {
    if (i === 0) return null;
    const previous = points[i - 1];
    const seconds = p.t - previous.t;
    const delta = p.total - previous.total;
    return seconds > 0 && delta >= 0 ? delta / seconds : null;
  });
}

async function pollStats() {
  let stats;
  try {
    stats = await getStats();
    setLive(true);
  } catch {
    setLive(false);
    return;
  }
  const total = Number(stats.events_total);
  samples.push({ t: Date.now() / 1000, total });
  if (samples.length > RATE_WINDOW) samples.shift();
  const series = rates(samples);
  const now = series.at(-1);

  const card = $('#ingest-rate');
  card.dataset.eventsTotal = String(stats.events_total);
  card.dataset.rate = now === null || now === undefined ? '' : now.toFixed(1);
  $('#rate-now').textContent = now === null || now === undefined ? '–' : formatCompact(now);
  $('#events-total').textContent = total.toLocaleString();
  $('#batches-total').textContent = Number(stats.batches_total ?? 0).toLocaleString();
  $('#buffer-rows').textContent = Number(stats.buffer_rows ?? 0).toLocaleString();
  $('#buffer-bytes').textContent = formatBytes(stats.buffer_bytes ?? 0);
  $('#parts').textContent = Number(stats.parts ?? 0).toLocaleString();
  $('#uptime').textContent = formatUptime(Number(stats.uptime_s ?? 0));
  $('#node').textContent = `node ${stats.node_id}`;

  rateChart ??= new LineChart($('#rate-chart'), {
    labels: ['events/s'],
    height: 220,
    fill: true,
    xWindow: () => [Date.now() / 1000 - (RATE_WINDOW * STATS_EVERY_MS) / 1000, Date.now() / 1000],
  });
  rateChart.setData(
    samples.map((s) => s.t),
    [series],
  );
}

// ---- events per category ----------------------------------------------------------------------

let categoryChart = null;
let categoryLabels = '';

/** Bucket width for a range: minutes up to 1 h, then coarser so a chart keeps ~100 points. */
export function bucketMinutes(rangeMinutes) {
  if (rangeMinutes <= 60) return 1;
  if (rangeMinutes <= 360) return 5;
  return 15;
}

/** SQL for events per category per bucket since `rangeMinutes` ago (client clock, Unix ns). */
export function categoriesOverTimeSql(rangeMinutes, nowMs = Date.now()) {
  const bucket = BigInt(bucketMinutes(rangeMinutes)) * MINUTE_NS;
  const nowNs = BigInt(Math.floor(nowMs)) * 1_000_000n;
  const since = ((nowNs - BigInt(rangeMinutes) * MINUTE_NS) / bucket) * bucket;
  return (
    `SELECT minute - minute % ${bucket} AS minute, category, sum(count) AS events ` +
    `FROM rollup_minute WHERE minute >= ${since} GROUP BY ALL ORDER BY minute, category`
  );
}

async function pollCategories() {
  const container = $('#categories-chart');
  const range = Number($('#categories-range').value);
  try {
    const answer = await runSql(categoriesOverTimeSql(range), { queryId: newQueryId(), maxRows: 20_000 });
    const plan = planChart(answer.columns, answer.rows);
    if (!plan || plan.kind !== 'line') {
      categoryChart?.destroy();
      categoryChart = null;
      categoryLabels = '';
      container.replaceChildren(el('p', { class: 'placeholder', text: 'No events in this range yet.' }));
      return;
    }
    const labels = plan.series.map((s) => s.label);
    if (labels.join('\n') !== categoryLabels) {
      categoryChart?.destroy();
      container.replaceChildren();
      categoryChart = new LineChart(container, {
        labels,
        height: 260,
        xWindow: () => [Date.now() / 1000 - Number($('#categories-range').value) * 60, Date.now() / 1000],
      });
      categoryLabels = labels.join('\n');
    }
    categoryChart.setData(
      plan.x,
      plan.series.map((s) => s.values),
    );
    const bucket = bucketMinutes(range);
    $('#categories-note').textContent =
      `events per ${bucket === 1 ? 'minute' : `${bucket} minutes`}, UTC; the last bucket is still filling` +
      (plan.note.includes('top') ? ` · ${plan.note.split(', ').at(-1)}` : '');
  } catch (error) {
    container.replaceChildren(el('p', { class: 'error-text', text: `Could not load: ${error.message}` }));
    categoryChart = null;
    categoryLabels = '';
  }
}

// ---- top producers ----------------------------------------------------------------------------

async function loadCategoryChoices() {
  const select = $('#topk-category');
  try {
    const { rows } = await runSql(CATEGORIES_SQL, { queryId: newQueryId(), maxRows: 200 });
    const current = select.value;
    const names = rows.map(([category]) => String(category));
    if (names.join('\n') === [...select.options].map((o) => o.value).join('\n')) return;
    select.replaceChildren(...names.map((name) => el('option', { value: name, text: name })));
    if (names.includes(current)) select.value = current;
  } catch {
    // Categories appear with the first events; the next poll tries again.
  }
}

async function pollTopProducers() {
  const root = $('#top-producers');
  if (!$('#topk-category').value) await loadCategoryChoices();
  const category = $('#topk-category').value;
  if (!category) {
    root.replaceChildren(el('p', { class: 'placeholder', text: 'No categories yet: post some events.' }));
    return;
  }
  try {
    const answer = await getCore('topk', { category, start: $('#topk-range').value, end: 'now', k: 10 });
    const producers = answer.producers ?? [];
    if (!producers.length) {
      root.replaceChildren(el('p', { class: 'placeholder', text: `No ${category} events in this range.` }));
      return;
    }
    const top = Math.max(...producers.map((p) => Number(p.count)), 1);
    const rows = producers.map((p, i) =>
      el(
        'tr',
        {},
        el('td', { class: 'rownum', text: String(i + 1) }),
        el('td', { class: 'producer', text: p.producer_id, title: p.producer_id }),
        el('td', { class: 'num', text: Number(p.count).toLocaleString() }),
        el(
          'td',
          { class: 'bar-cell' },
          el('span', { class: 'bar', style: `width: ${(Number(p.count) / top) * 100}%` }),
        ),
      ),
    );
    const partial = answer.partial
      ? el('p', {
          class: 'warning',
          text: `Partial: shards ${answer.missing_shards.join(', ')} unreachable.`,
        })
      : null;
    root.replaceChildren(
      el(
        'table',
        { class: 'results compact' },
        el(
          'thead',
          {},
          el(
            'tr',
            {},
            el('th', { text: '#' }),
            el('th', { text: 'producer' }),
            el('th', { class: 'num', text: 'events' }),
            el('th', {}),
          ),
        ),
        el('tbody', {}, ...rows),
      ),
      ...[partial].filter(Boolean),
    );
  } catch (error) {
    root.replaceChildren(el('p', { class: 'error-text', text: `Could not load: ${error.message}` }));
  }
}

// ---- cluster ----------------------------------------------------------------------------------

/** Shards a node holds, whichever way the server reports them (a count or a list), or null. */
function shardsHeld(node) {
  const held = node.shards ?? node.shards_held ?? node.shard_count;
  if (Array.isArray(held)) return held.length;
  return typeof held === 'number' || typeof held === 'bigint' ? Number(held) : null;
}

/** `up`, `down`, or `not-serving` for a node that answers but is still catching up (joining, repairing). */
function health(node) {
  if (!node.up) return 'down';
  return node.serving === false ? 'not-serving' : 'up';
}

async function pollCluster() {
  const root = $('#nodes');
  try {
    const cluster = await getCluster();
    const nodes = cluster.nodes ?? [];
    const up = nodes.filter((n) => n.up).length;
    $('#cluster-summary').textContent =
      `${up}/${nodes.length} up · epoch ${cluster.epoch} · RF ${cluster.rf}` +
      (cluster.w ? ` · W ${cluster.w}` : '') +
      ` · ${cluster.shards} shards` +
      (cluster.in_transition ? ' · rebalancing' : '');
    const showShards = nodes.some((n) => shardsHeld(n) !== null);
    const head = ['node', 'url', 'state', 'health', ...(showShards ? ['shards'] : [])];
    const rows = nodes.map((n) => {
      const url = n.url ? el('a', { href: `${n.url.replace(/\/$/, '')}/dashboard`, text: n.url }) : '';
      return el(
        'tr',
        { 'data-node': n.node_id, 'data-up': String(Boolean(n.up)) },
        el('td', { class: 'node-id', text: n.node_id }),
        el('td', {}, url),
        el('td', {}, el('span', { class: `pill state-${n.state}`, text: n.state })),
        el('td', {}, el('span', { class: `health ${health(n)}`, text: health(n).replace('-', ' ') })),
        ...(showShards
          ? [el('td', { class: 'num', text: shardsHeld(n) === null ? '–' : String(shardsHeld(n)) })]
          : []),
      );
    });
    root.replaceChildren(
      el(
        'table',
        { class: 'results compact' },
        el(
          'thead',
          {},
          el('tr', {}, ...head.map((h) => el('th', { class: h === 'shards' ? 'num' : undefined, text: h }))),
        ),
        el('tbody', {}, ...rows),
      ),
    );
  } catch (error) {
    root.replaceChildren(
      el('p', { class: 'error-text', text: `Could not load the cluster map: ${error.message}` }),
    );
  }
}

installTokenPrompt();
every(STATS_EVERY_MS, pollStats);
const refreshCategories = every(SLOW_EVERY_MS, pollCategories);
every(SLOW_EVERY_MS, loadCategoryChoices);
const refreshTop = every(SLOW_EVERY_MS, pollTopProducers);
every(CLUSTER_EVERY_MS, pollCluster);

$('#categories-range').addEventListener('change', refreshCategories);
$('#topk-category').addEventListener('change', refreshTop);
$('#topk-range').addEventListener('change', refreshTop);
