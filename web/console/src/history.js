// The queries this browser ran, newest first, kept in localStorage so they outlive the tab.

const KEY = 'tributary.history.v1';
const LIMIT = 100;

/** Every remembered entry: `{sql, at, ok, rows, ms}`, newest first. Never throws. */
export function loadHistory() {
  try {
    const entries = JSON.parse(localStorage.getItem(KEY) || '[]');
    return Array.isArray(entries) ? entries.filter((e) => typeof e?.sql === 'string') : [];
  } catch {
    return [];
  }
}

function save(entries) {
  try {
    localStorage.setItem(KEY, JSON.stringify(entries.slice(0, LIMIT)));
  } catch {
    // Storage full or disabled (private windows): history is a convenience, the query still ran.
  }
}

/** Records a run; the same SQL run again moves to the top instead of repeating. */
export function remember(entry) {
  const sql = entry.sql.trim();
  save([{ ...entry, sql, at: Date.now() }, ...loadHistory().filter((e) => e.sql !== sql)]);
}

export function forget(sql) {
  save(loadHistory().filter((e) => e.sql !== sql));
}

export function clearHistory() {
  save([]);
}
