// How values from DuckDB's JSON look on screen, and which columns are numbers or times.

const NUMERIC =
  /^(TINYINT|SMALLINT|INTEGER|INT|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT|FLOAT|REAL|DOUBLE|DECIMAL|NUMERIC|INT\d+)\b/i;
const INTEGER =
  /^(TINYINT|SMALLINT|INTEGER|INT|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT|INT\d+)$/i;
const TEMPORAL = /^(TIMESTAMP|DATE|DATETIME)/i;
const TEXT = /^(VARCHAR|TEXT|STRING|CHAR|BPCHAR|ENUM|UUID)/i;
// Tributary stores time as BIGINT Unix nanoseconds; these names mark such columns (issue 5).
const TIME_NAMES = /^(t|ts|time|timestamp|minute|hour|day|bucket|start|end)$/i;

export const isNumericType = (type) => NUMERIC.test(type || '');
export const isIntegerType = (type) => INTEGER.test(type || '');
export const isTemporalType = (type) => TEMPORAL.test(type || '');
export const isTextType = (type) => TEXT.test(type || '');
export const hasTimeName = (name) => TIME_NAMES.test(name || '');

/**
 * Milliseconds since the epoch for a cell, or null. Integers are read by magnitude
 * (ns, µs, ms or s), strings as ISO dates; DuckDB's naive TIMESTAMP text is taken as UTC.
 */
export function toEpochMs(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === 'bigint') return Number(value / 1000n) / 1000;
  if (typeof value === 'number') {
    const magnitude = Math.abs(value);
    if (magnitude >= 1e17) return value / 1e6;
    if (magnitude >= 1e14) return value / 1e3;
    if (magnitude >= 1e11) return value;
    return value * 1e3;
  }
  if (typeof value === 'string') {
    let text = value.trim().replace(' ', 'T');
    if (/^\d{4}-\d{2}-\d{2}T[\d:.]+$/.test(text)) text += 'Z';
    else if (/^\d{4}-\d{2}-\d{2}$/.test(text)) text += 'T00:00:00Z';
    else text = text.replace(/([+-]\d{2})$/, '$1:00');
    const ms = Date.parse(text);
    return Number.isNaN(ms) ? null : ms;
  }
  return null;
}

/** True when an integer looks like Unix nanoseconds between 1990 and 2200. */
export function looksLikeEpochNs(value) {
  const n = typeof value === 'bigint' ? Number(value) : value;
  return typeof n === 'number' && n > 6.3e17 && n < 7.3e18;
}

/** A number as plain digits for copy-paste; doubles keep up to 6 significant decimals. */
export function formatNumber(value) {
  if (typeof value === 'bigint') return value.toString();
  if (typeof value !== 'number') return String(value);
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-4 || abs >= 1e15)) return value.toExponential(6);
  return String(Number(value.toPrecision(12)));
}

/** A short human number for cards and axes: 12.3k, 4.5M. */
export function formatCompact(value) {
  const n = typeof value === 'bigint' ? Number(value) : value;
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  const abs = Math.abs(n);
  if (abs < 1000) return Number.isInteger(n) ? String(n) : n.toFixed(abs < 10 ? 2 : 1);
  const units = [
    ['T', 1e12],
    ['G', 1e9],
    ['M', 1e6],
    ['k', 1e3],
  ];
  const [suffix, size] = units.find(([, s]) => abs >= s);
  return `${(n / size).toFixed(abs / size < 10 ? 2 : 1)}${suffix}`;
}

/** A timestamp in UTC as `2024-05-01 12:30:05[.250] UTC`; milliseconds only when not zero. */
export function formatUtc(ms) {
  const iso = new Date(ms).toISOString();
  const millis = iso.slice(19, 23);
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)}${millis === '.000' ? '' : millis} UTC`;
}

/** The text of a cell: objects and lists as JSON, everything else as it came. */
export function formatCell(value) {
  if (typeof value === 'number' || typeof value === 'bigint') return formatNumber(value);
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'object') {
    return JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
  }
  return String(value);
}

/** Milliseconds as a duration people read at a glance: 840 ms, 2.4 s, 3 min 5 s. */
export function formatDuration(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  const minutes = Math.floor(ms / 60_000);
  return `${minutes} min ${Math.round((ms % 60_000) / 1000)} s`;
}

/** A byte count in binary units: 812 B, 4.2 kB, 38 MB. */
export function formatBytes(n) {
  const value = Number(n);
  if (value < 1024) return `${value} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let size = value / 1024;
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return `${size.toFixed(size < 10 ? 1 : 0)} ${units[unit]}`;
}
