// The console's side panels: schema, core queries, example snippets and history. Each renders
// into its element and reports clicks through callbacks; none of them runs queries itself.

import { coreQueryUrl } from './api.js';
import { el } from './results.js';

/** Example SQL that shows off the views; each one also exercises a chart kind. */
export const EXAMPLES = [
  {
    title: 'Events per category',
    sql: 'SELECT category, count(*) AS events, sum(value) AS total\nFROM events\nGROUP BY category\nORDER BY events DESC',
  },
  {
    title: 'Events per minute, last hour',
    sql:
      'SELECT minute, sum(count) AS events, sum(sum) AS total\nFROM rollup_minute\n' +
      'WHERE minute >= epoch_ns(now() - INTERVAL 1 HOUR)\nGROUP BY minute\nORDER BY minute',
  },
  {
    title: 'Per category per minute',
    sql:
      'SELECT minute, category, sum(count) AS events\nFROM rollup_minute\n' +
      'WHERE minute >= epoch_ns(now() - INTERVAL 1 HOUR)\nGROUP BY ALL\nORDER BY minute',
  },
  {
    title: 'Top producers, all time',
    sql: 'SELECT producer_id, sum(count) AS events\nFROM rollup_producer_hour\nGROUP BY producer_id\nORDER BY events DESC, producer_id\nLIMIT 20',
  },
  {
    title: 'Hourly as TIMESTAMP',
    sql: 'SELECT make_timestamp(hour // 1000) AS hour_utc, sum(count) AS events\nFROM rollup_producer_hour\nGROUP BY ALL\nORDER BY hour_utc',
  },
  {
    title: 'Distinct producers per category',
    sql: 'SELECT category, count(DISTINCT producer_id) AS producers\nFROM events\nGROUP BY category\nORDER BY producers DESC',
  },
  {
    title: 'Latest raw events',
    sql: 'SELECT make_timestamp(timestamp // 1000) AS at, *\nFROM events\nORDER BY timestamp DESC\nLIMIT 100',
  },
];

/** Fills `#schema` from the `/v1/tables` answer; `onInsert(name)` and `onPreview(table)` on clicks. */
export function renderSchema(root, tables, { onInsert, onPreview }) {
  root.replaceChildren(
    ...tables.map((table) => {
      const name = el('button', {
        class: 'link insert',
        type: 'button',
        title: `insert ${table.name}`,
        text: table.name,
      });
      name.addEventListener('click', (event) => {
        event.preventDefault(); // a click on the name inserts it; the marker beside it folds the list
        onInsert(table.name);
      });
      const preview = el('button', {
        class: 'ghost small',
        type: 'button',
        title: `SELECT * FROM ${table.name} LIMIT 100`,
        text: 'preview',
      });
      preview.addEventListener('click', (event) => {
        event.preventDefault();
        onPreview(table.name);
      });
      const columns = table.columns.map((c) => {
        const button = el('button', {
          class: 'link insert',
          type: 'button',
          title: `insert ${c.name}`,
          text: c.name,
        });
        button.addEventListener('click', () => onInsert(c.name));
        return el('li', {}, button, el('span', { class: 'type', text: c.type }));
      });
      return el(
        'details',
        { class: 'schema-table', open: true, 'data-table': table.name },
        el('summary', {}, name, el('span', { class: 'count', text: String(table.columns.length) }), preview),
        el('ul', { class: 'columns' }, ...columns),
      );
    }),
  );
}

/** Fills the examples list; `onPick(sql)` when one is clicked. */
export function renderExamples(root, onPick) {
  root.replaceChildren(
    ...EXAMPLES.map((example) => {
      const button = el('button', { class: 'link', type: 'button', title: example.sql, text: example.title });
      button.addEventListener('click', () => onPick(example.sql));
      return el('li', {}, button);
    }),
  );
}

function ago(at) {
  const seconds = Math.round((Date.now() - at) / 1000);
  if (seconds < 60) return 'just now';
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(at).toLocaleDateString();
}

/** Fills `#history` with the remembered runs; `onPick(sql)` restores one into the editor. */
export function renderHistory(root, entries, onPick) {
  if (!entries.length) {
    root.replaceChildren(el('li', { class: 'empty', text: 'Queries you run appear here.' }));
    return;
  }
  root.replaceChildren(
    ...entries.map((entry) => {
      const meta = entry.ok
        ? `${entry.rows} rows · ${Math.round(entry.ms)} ms`
        : entry.cancelled
          ? 'cancelled'
          : 'error';
      const button = el(
        'button',
        { class: `history-entry${entry.ok ? '' : ' failed'}`, type: 'button', title: entry.sql },
        el('code', { text: entry.sql.replace(/\s+/g, ' ') }),
        el('span', { class: 'meta', text: `${ago(entry.at)} · ${meta}` }),
      );
      button.addEventListener('click', () => onPick(entry.sql));
      return el('li', {}, button);
    }),
  );
}

/**
 * Wires the core-query form: category, range and k make three real links (`/v1/count`,
 * `/v1/sum`, `/v1/topk`) that can be opened or shared; a plain click calls `onCall(kind, url)`.
 */
export function wireCoreQueries(form, links, onCall) {
  const update = () => {
    const data = new FormData(form);
    const args = {
      category: data.get('category') || '',
      start: data.get('start'),
      end: 'now',
      k: data.get('k') || 10,
    };
    for (const link of links.querySelectorAll('a[data-kind]')) {
      link.href = coreQueryUrl(link.dataset.kind, args);
    }
  };
  form.addEventListener('input', update);
  form.addEventListener('submit', (event) => event.preventDefault());
  links.addEventListener('click', (event) => {
    const link = event.target.closest('a[data-kind]');
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    onCall(link.dataset.kind, link.getAttribute('href'));
  });
  update();
  return update;
}

/** SQL for the known categories, busiest first (fills the category pickers); rollups keep it cheap. */
export const CATEGORIES_SQL =
  'SELECT category, sum(count) AS events FROM rollup_minute GROUP BY category ORDER BY events DESC, category LIMIT 200';
