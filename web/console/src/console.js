// The SQL console page: runs the editor's query, keeps it in the URL and the history, shows the
// answer as a table and (when it fits) a chart, cancels on request and exports the whole result.

import './style.css';
import { ApiError, cancelSql, exportSql, getCore, getStats, getTables, newQueryId, runSql } from './api.js';
import { drawPlan, planChart } from './chart.js';
import { createEditor } from './editor.js';
import { formatBytes, formatDuration } from './format.js';
import { clearHistory, loadHistory, remember } from './history.js';
import {
  CATEGORIES_SQL,
  EXAMPLES,
  renderExamples,
  renderHistory,
  renderSchema,
  wireCoreQueries,
} from './panels.js';
import { el, resultFooter, resultTable } from './results.js';
import { installTokenPrompt } from './token.js';

// Rows asked of the server for the table and chart; Export always fetches the whole result.
const MAX_ROWS = 10_000;
const DRAFT_KEY = 'tributary.draft.v1';

const $ = (selector) => document.querySelector(selector);
const ui = {
  run: $('#run'),
  cancel: $('#cancel'),
  status: $('#status'),
  results: $('#results'),
  chart: $('#chart'),
  chartBody: $('#chart .chart-body'),
  chartNote: $('#chart .chart-note'),
  exportCsv: $('#export-csv'),
  exportParquet: $('#export-parquet'),
  history: $('#history'),
};

let running = null; // {queryId, controller, started, timer, kind}
let lastSql = '';
let chart = null;

const editor = createEditor($('#editor'), {
  doc: initialSql(),
  onRun: (sql) => runQuery(sql),
  onChange: (docChanged) => {
    ui.run.querySelector('.label').textContent = editor?.hasSelection() ? 'Run selection' : 'Run';
    if (docChanged) saveDraft();
  },
});

function initialSql() {
  const fromUrl = new URLSearchParams(location.search).get('sql');
  if (fromUrl) return fromUrl;
  try {
    return localStorage.getItem(DRAFT_KEY) || EXAMPLES[0].sql;
  } catch {
    return EXAMPLES[0].sql;
  }
}

let draftTimer;
function saveDraft() {
  clearTimeout(draftTimer);
  draftTimer = setTimeout(() => {
    try {
      localStorage.setItem(DRAFT_KEY, editor.getText());
    } catch {
      // No storage: the draft is a convenience only.
    }
  }, 300);
}

function setStatus(state, text, attrs = {}) {
  ui.status.dataset.state = state;
  if (state === 'running') delete ui.status.dataset.serverCancelled;
  for (const [key, value] of Object.entries(attrs)) ui.status.dataset[key] = String(value);
  ui.status.replaceChildren(el('span', { class: 'dot', 'aria-hidden': 'true' }), el('span', { text }));
}

function setBusy(busy) {
  ui.cancel.disabled = !busy;
  document.body.classList.toggle('busy', busy);
}

function clearChart() {
  chart?.destroy();
  chart = null;
  ui.chart.hidden = true;
  ui.chartBody.replaceChildren();
}

function showChart(plan, title) {
  clearChart();
  if (!plan) return;
  ui.chart.hidden = false;
  ui.chartNote.textContent = [title, plan.note].filter(Boolean).join(' · ');
  chart = drawPlan(ui.chartBody, plan);
}

function showError(error) {
  const title = error instanceof ApiError ? `${error.title} (${error.status})` : 'Request failed';
  const detail = error instanceof ApiError ? error.detail : String(error.message || error);
  ui.results.replaceChildren(
    el('div', { class: 'error', role: 'alert' }, el('strong', { text: title }), el('pre', { text: detail })),
  );
}

/** Starts an operation that Cancel can stop; a running one is cancelled first. */
function begin(kind, label) {
  if (running) stop('superseded');
  const controller = new AbortController();
  const started = performance.now();
  const op = { queryId: newQueryId(), controller, started, kind, timer: null };
  op.timer = setInterval(
    () => setStatus('running', `${label}… ${formatDuration(performance.now() - started)}`),
    100,
  );
  setStatus('running', `${label}…`, { queryId: op.queryId });
  setBusy(true);
  running = op;
  return op;
}

function end(op) {
  clearInterval(op.timer);
  if (running === op) {
    running = null;
    setBusy(false);
  }
  return performance.now() - op.started;
}

/**
 * Cancels the running operation: aborts its request at once and tells the server to stop the
 * query by its id. A Cancel that lands before the server has registered the query is answered
 * `cancelled: false`, so the cancel is repeated for a short while until the server confirms.
 */
function stop(reason = 'cancelled') {
  const op = running;
  if (!op) return;
  op.cancelReason = reason;
  clearInterval(op.timer); // its ticking must not overwrite the status of whatever comes next
  op.controller.abort();
  if (op.kind !== 'core') cancelOnServer(op.queryId);
}

async function cancelOnServer(queryId, attempts = 8) {
  for (let attempt = 0; attempt < attempts; attempt += 1) {
    try {
      if (await cancelSql(queryId)) {
        // Say so on the status while it still shows this query: the server confirmed the stop.
        if (ui.status.dataset.queryId === queryId) ui.status.dataset.serverCancelled = 'true';
        return;
      }
    } catch {
      // The node may be busy or gone; try again, the query may still be running there.
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

async function runQuery(sql, { push = true } = {}) {
  sql = sql.trim();
  if (!sql) return;
  editor.closePopups();
  lastSql = sql;
  if (push) pushUrl(sql);
  const op = begin('query', 'Running');
  try {
    const answer = await runSql(sql, {
      queryId: op.queryId,
      maxRows: MAX_ROWS,
      signal: op.controller.signal,
    });
    const ms = end(op);
    const rows = answer.rows.length;
    const server = typeof answer.took_ms === 'number' ? ` (server ${formatDuration(answer.took_ms)})` : '';
    const truncated = answer.truncated ? ' · truncated' : '';
    setStatus(
      'done',
      `${rows.toLocaleString()} ${rows === 1 ? 'row' : 'rows'} · ${formatDuration(ms)}${server}${truncated}`,
      {
        rows,
        ms: Math.round(ms),
        truncated: Boolean(answer.truncated),
      },
    );
    ui.results.replaceChildren(resultTable(answer), ...[resultFooter(answer)].filter(Boolean));
    showChart(planChart(answer.columns, answer.rows));
    remember({ sql, ok: true, rows, ms });
  } catch (error) {
    const ms = end(op);
    if (op.controller.signal.aborted) {
      if (op.cancelReason === 'superseded') return;
      setStatus('cancelled', `Cancelled after ${formatDuration(ms)}`, { rows: 0, ms: Math.round(ms) });
      ui.results.replaceChildren(el('p', { class: 'placeholder', text: 'The query was cancelled.' }));
      remember({ sql, ok: false, cancelled: true, ms });
    } else {
      setStatus('error', `Error after ${formatDuration(ms)}`, { rows: 0, ms: Math.round(ms) });
      showError(error);
      remember({ sql, ok: false, ms });
    }
    clearChart();
  }
  refreshHistory();
}

function pushUrl(sql) {
  const url = new URL(location.href);
  if (url.searchParams.get('sql') === sql) return;
  url.searchParams.set('sql', sql);
  history.pushState({ sql }, '', url);
}

// Back and Forward restore the query that URL names and run it, as loading it fresh would.
window.addEventListener('popstate', () => {
  const sql = new URLSearchParams(location.search).get('sql');
  if (!sql) return;
  editor.setText(sql);
  runQuery(sql, { push: false });
});

function fileStamp(date = new Date()) {
  return date
    .toISOString()
    .replace(/\.\d+Z$/, 'Z')
    .replace(/[-:]/g, '');
}

async function exportResult(format) {
  const sql = lastSql || editor.runnableText().trim();
  if (!sql) return;
  const op = begin('export', `Exporting ${format.toUpperCase()}`);
  try {
    const blob = await exportSql(sql, format, { queryId: op.queryId, signal: op.controller.signal });
    const ms = end(op);
    const name = `tributary-${fileStamp()}.${format}`;
    const url = URL.createObjectURL(blob);
    const link = el('a', { href: url, download: name, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    setStatus('exported', `Saved ${name} (${formatBytes(blob.size)}) · ${formatDuration(ms)}`);
  } catch (error) {
    const ms = end(op);
    if (op.controller.signal.aborted) {
      if (op.cancelReason !== 'superseded')
        setStatus('cancelled', `Export cancelled after ${formatDuration(ms)}`);
      return;
    }
    setStatus('error', `Export failed after ${formatDuration(ms)}`);
    showError(error);
  }
}

async function callCore(kind, url) {
  const op = begin('core', `GET ${url}`);
  try {
    const answer = await getCore(kind, Object.fromEntries(new URL(url, location.href).searchParams), {
      signal: op.controller.signal,
    });
    const ms = end(op);
    setStatus('done', `/v1/${kind} answered in ${formatDuration(ms)}`, { ms: Math.round(ms) });
    const json = JSON.stringify(answer, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2);
    const head = el(
      'div',
      { class: 'api-url' },
      el('span', { class: 'method', text: 'GET' }),
      el('a', { href: url, text: url }),
    );
    const headline =
      kind === 'topk'
        ? null
        : el(
            'div',
            { class: 'big-number' },
            el('span', { class: 'value', text: String(answer.value ?? '–') }),
            el('span', { class: 'unit', text: kind }),
          );
    ui.results.replaceChildren(
      el(
        'div',
        { class: 'api-answer', 'data-testid': 'api-answer' },
        head,
        ...[headline].filter(Boolean),
        el('pre', { text: json }),
      ),
    );
    if (kind === 'topk' && answer.producers?.length) {
      showChart(
        {
          kind: 'bar',
          labels: answer.producers.map((p) => p.producer_id),
          values: answer.producers.map((p) => Number(p.count)),
          valueLabel: 'count',
          note: '',
        },
        'top producers',
      );
    } else {
      clearChart();
    }
  } catch (error) {
    end(op);
    if (op.controller.signal.aborted) return;
    setStatus('error', `/v1/${kind} failed`);
    showError(error);
    clearChart();
  }
}

function refreshHistory() {
  renderHistory(ui.history, loadHistory(), (sql) => {
    editor.setText(sql);
    editor.focus();
  });
}

async function loadSchema() {
  const schema = $('#schema');
  try {
    const { tables } = await getTables();
    renderSchema(schema, tables, {
      onInsert: (name) => editor.insert(name),
      onPreview: (table) => {
        const sql = `SELECT * FROM ${table} LIMIT 100`;
        editor.setText(sql);
        runQuery(sql);
      },
    });
    editor.setSchema(tables);
  } catch (error) {
    schema.replaceChildren(el('p', { class: 'error-text', text: `Could not load tables: ${error.message}` }));
  }
}

async function loadCategories() {
  try {
    const { rows } = await runSql(CATEGORIES_SQL, { queryId: newQueryId(), maxRows: 200 });
    $('#categories').replaceChildren(...rows.map(([category]) => el('option', { value: category })));
    const input = $('#core-category');
    if (!input.value && rows.length) {
      input.value = rows[0][0];
      input.dispatchEvent(new Event('input', { bubbles: true }));
    }
  } catch {
    // An empty node has no categories yet; the field still takes any text.
  }
}

async function loadNode() {
  try {
    const stats = await getStats();
    $('#node').textContent = `node ${stats.node_id}`;
  } catch {
    $('#node').textContent = '';
  }
}

installTokenPrompt();

const isMac = /Mac|iPhone|iPad/.test(navigator.platform);
for (const kbd of document.querySelectorAll('kbd.mod')) kbd.textContent = isMac ? '⌘' : 'Ctrl';

ui.run.addEventListener('click', () => runQuery(editor.runnableText()));
ui.cancel.addEventListener('click', () => stop());
ui.exportCsv.addEventListener('click', () => exportResult('csv'));
ui.exportParquet.addEventListener('click', () => exportResult('parquet'));
$('#clear-history').addEventListener('click', (event) => {
  event.preventDefault(); // the button sits in the panel's summary; do not fold the panel
  clearHistory();
  refreshHistory();
});
document.addEventListener('keydown', (event) => {
  // Ctrl/Cmd+Enter runs from anywhere on the page, not only inside the editor; Escape cancels.
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey) && !event.defaultPrevented) {
    event.preventDefault();
    runQuery(editor.runnableText());
  } else if (event.key === 'Escape' && running) {
    stop();
  }
});

renderExamples($('#examples'), (sql) => {
  editor.setText(sql);
  runQuery(sql);
});
wireCoreQueries($('#core-form'), $('#core-links'), callCore);
refreshHistory();
loadSchema();
loadCategories();
loadNode();

if (new URLSearchParams(location.search).get('sql')) {
  runQuery(editor.getText(), { push: false });
} else {
  setStatus('idle', 'Ready', { rows: 0, ms: 0 });
  ui.results.replaceChildren(
    el('p', {
      class: 'placeholder',
      text: 'Write a query and press Ctrl+Enter, or pick an example on the left.',
    }),
  );
}
