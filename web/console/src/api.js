// The HTTP API as the pages use it. Every call goes to the same origin that served the page,
// so the console works against whichever node the user opened, with no configuration.

/** An answer that was not 2xx, carrying the RFC 9457 problem+json fields when the server sent them. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.title = problem.title || `HTTP ${status}`;
    this.detail = problem.detail || '';
    this.problem = problem;
  }
}

/**
 * JSON.parse that keeps integers beyond 2^53 exact as BigInt: nanosecond timestamps
 * (~1.7e18) would otherwise be rounded to the nearest 256 ns. Falls back to plain
 * numbers on browsers without the reviver's `source` (they only lose that precision).
 */
export function parseJson(text) {
  return JSON.parse(text, (_key, value, context) => {
    if (
      typeof value === 'number' &&
      !Number.isSafeInteger(value) &&
      context &&
      /^-?\d+$/.test(context.source)
    ) {
      return BigInt(context.source);
    }
    return value;
  });
}

async function failure(response) {
  const text = await response.text();
  let problem = {};
  try {
    problem = JSON.parse(text);
  } catch {
    problem = { title: response.statusText || `HTTP ${response.status}`, detail: text.slice(0, 500) };
  }
  return new ApiError(response.status, problem);
}

const TOKEN_KEY = 'tributary.token.v1';
let promptForToken = null;

/** The bearer token this browser keeps for the node ('' for none); nodes without tokens ignore it. */
export function currentToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

export function saveToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // No storage: the token lasts until the tab closes, through the dialog asking again.
  }
}

/**
 * Sets what a 401 does: `ask()` resolves true once the user has given a token, false if they
 * declined. Only one request waits on the dialog; the others share its answer.
 */
export function onUnauthorized(ask) {
  let pending = null;
  promptForToken = () => {
    pending ??= ask().finally(() => {
      pending = null;
    });
    return pending;
  };
}

async function send(path, init, { retry = true } = {}) {
  const token = currentToken();
  const headers = { ...init.headers, ...(token ? { Authorization: `Bearer ${token}` } : {}) };
  const response = await fetch(path, { ...init, headers });
  if (response.status === 401 && retry && promptForToken && !init.signal?.aborted) {
    if (await promptForToken()) return send(path, init, { retry: false });
  }
  if (!response.ok) throw await failure(response);
  return response;
}

async function getJson(path, { signal } = {}) {
  const response = await send(path, { headers: { Accept: 'application/json' }, signal });
  return parseJson(await response.text());
}

function postJson(path, body, { signal } = {}) {
  return send(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify(body),
    signal,
  });
}

/** A client-chosen query id, so Cancel can name the query while its answer is still on the way. */
export function newQueryId() {
  // crypto.randomUUID exists only in secure contexts; a node opened over plain http on a LAN is not one.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Runs SQL and returns `{columns, rows, row_count, truncated, took_ms, query_id}`. */
export async function runSql(sql, { queryId, maxRows, signal } = {}) {
  const body = { sql, format: 'json', query_id: queryId };
  if (maxRows) body.max_rows = maxRows;
  const response = await postJson('/v1/sql', body, { signal });
  return parseJson(await response.text());
}

/** Runs SQL for a file download; resolves to the Blob of the whole result in `format`. */
export async function exportSql(sql, format, { queryId, signal } = {}) {
  const response = await postJson('/v1/sql', { sql, format, query_id: queryId }, { signal });
  return response.blob();
}

/** Asks the server to stop the query; resolves to whether it was still running. */
export async function cancelSql(queryId) {
  const response = await postJson('/v1/sql/cancel', { query_id: queryId });
  const answer = await response.json();
  return Boolean(answer.cancelled);
}

export const getTables = (opts) => getJson('/v1/tables', opts);
export const getStats = (opts) => getJson('/v1/stats', opts);
export const getCluster = (opts) => getJson('/v1/cluster', opts);

/** The URL of a core query (`count`, `sum` or `topk`); relative ranges like `now-1h` keep links shareable. */
export function coreQueryUrl(kind, { category, start, end, k }) {
  const params = new URLSearchParams({ category, start, end });
  if (kind === 'topk') params.set('k', String(k ?? 10));
  return `/v1/${kind}?${params}`;
}

export const getCore = (kind, args, opts) => getJson(coreQueryUrl(kind, args), opts);
