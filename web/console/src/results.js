// The results table: column names with their types, NULLs drawn apart from text, numbers
// right-aligned, at most DRAW_LIMIT rows put in the DOM so a big answer cannot freeze the tab.

import {
  formatCell,
  formatUtc,
  hasTimeName,
  isNumericType,
  isTemporalType,
  looksLikeEpochNs,
  toEpochMs,
} from './format.js';

export const DRAW_LIMIT = 1000;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  node.append(...children);
  return node;
}

export { el };

/** The scrolling table for a `/v1/sql` JSON answer (only the first DRAW_LIMIT rows). */
export function resultTable(answer) {
  const { columns, rows } = answer;
  const numeric = columns.map((c) => isNumericType(c.type));
  // BIGINT time columns hold epoch ns; a tooltip shows the instant without changing the exact digits.
  const timeHint = columns.map((c, i) => isTemporalType(c.type) || (numeric[i] && hasTimeName(c.name)));
  const head = el(
    'tr',
    {},
    el('th', { class: 'rownum', scope: 'col', text: '#' }),
    ...columns.map((c, i) =>
      el(
        'th',
        { scope: 'col', class: numeric[i] ? 'num' : undefined, title: `${c.name} ${c.type}` },
        el('span', { class: 'col-name', text: c.name }),
        el('span', { class: 'col-type', text: c.type }),
      ),
    ),
  );
  const body = document.createDocumentFragment();
  const shown = rows.slice(0, DRAW_LIMIT);
  shown.forEach((row, r) => {
    const tr = el('tr', {}, el('td', { class: 'rownum', text: String(r + 1) }));
    row.forEach((value, i) => {
      if (value === null || value === undefined) {
        tr.append(el('td', { class: numeric[i] ? 'num null' : 'null', text: 'NULL' }));
        return;
      }
      let title;
      if (timeHint[i] && (!numeric[i] || looksLikeEpochNs(value))) {
        const ms = toEpochMs(value);
        if (ms !== null) title = formatUtc(ms);
      }
      const classes = [numeric[i] && 'num', title && 'time'].filter(Boolean).join(' ');
      const cell = el('td', { class: classes || undefined, title, text: formatCell(value) });
      // Epoch nanoseconds mean nothing at a glance: the instant follows, muted, in UTC.
      if (title && numeric[i])
        cell.append(el('span', { class: 'when', text: title.replace(/(:00)? UTC$/, '') }));
      tr.append(cell);
    });
    body.append(tr);
  });
  // The wrapper scrolls both ways so the header can stick to its top while the rows move.
  return el(
    'div',
    { class: 'table-wrap' },
    el('table', { class: 'results' }, el('thead', {}, head), el('tbody', {}, body)),
  );
}

/** One line under the table saying what was drawn of what came back. */
export function resultFooter(answer) {
  const parts = [];
  if (answer.rows.length > DRAW_LIMIT) {
    parts.push(`Showing the first ${DRAW_LIMIT} of ${answer.rows.length} rows; Export gives them all.`);
  }
  if (answer.truncated) {
    parts.push(`The server stopped at ${answer.row_count} rows (truncated); Export runs the query in full.`);
  }
  return parts.length
    ? el('p', { class: 'result-note', 'data-testid': 'truncated', text: parts.join(' ') })
    : null;
}
