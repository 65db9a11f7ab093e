# Tributary's recipes: thin wrappers over `uv run`. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

port := env_var_or_default("TRIBUTARY_PORT", "8321")

default: lint test

# Install the locked Python environment.
sync:
    uv sync --frozen --quiet

# Build the console's JavaScript and CSS from npm packages (skipped when up to date).
assets:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -f web/console/package.json ]; then exit 0; fi
    stamp=web/static/dist/.built
    if [ -f "$stamp" ] && [ -z "$(find web/console -path web/console/node_modules -prune -o -newer "$stamp" -type f -print -quit)" ]; then exit 0; fi
    npm ci --prefix web/console --no-audit --no-fund --loglevel=error
    npm run --prefix web/console build
    mkdir -p web/static/dist && touch "$stamp"

# Run one node on 127.0.0.1:{{port}} with data in ./data.
serve *ARGS: sync assets
    uv run tributary serve --port {{port}} --data ./data {{ARGS}}

# A node with a load generator feeding it; prints the URLs. Ctrl-C stops both.
demo: sync assets
    #!/usr/bin/env bash
    set -euo pipefail
    uv run tributary serve --port {{port}} --data ./data/demo --persist-interval-s 5 &
    server=$!
    trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT INT TERM
    for _ in $(seq 1 120); do curl -sf http://127.0.0.1:{{port}}/ready >/dev/null && break; sleep 0.5; done
    echo
    echo "  Console:    http://127.0.0.1:{{port}}/"
    echo "  Dashboard:  http://127.0.0.1:{{port}}/dashboard"
    echo "  API docs:   http://127.0.0.1:{{port}}/schema"
    echo "  Try:        uv run tributary query topk --category cat00 --start now-15m --end now"
    echo
    uv run tributary load --url http://127.0.0.1:{{port}} --events 0 --rate 20000 --batch 2000 --producers 50000

# The whole test suite: unit, integration (real processes), browser (headless Chromium).
test *ARGS: sync assets
    uv run pytest {{ARGS}}

# Only the fast unit tests.
unit *ARGS: sync
    uv run pytest tests/unit -q {{ARGS}}

lint: sync
    uv run ruff check .
    uv run ruff format --check .
    uv run mypy

fmt: sync
    uv run ruff format .
    uv run ruff check --fix .

# Benchmarks against DuckDB and chdb; figures go to bench/RESULTS.md.
bench *ARGS: sync
    uv run python -m bench.run {{ARGS}}

# Schemathesis against a fresh node's OpenAPI schema for SECONDS (default 300); any 5xx fails.
fuzz SECONDS="300": sync
    #!/usr/bin/env bash
    set -euo pipefail
    data=$(mktemp -d)
    port=$(uv run python -c "from tests.support.process import free_port; print(free_port())")
    uv run tributary serve --port "$port" --data "$data" --no-fsync --sql-timeout-s 5 --query-timeout-s 5 \
        > "$data/node.log" 2>&1 &
    server=$!
    trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true; rm -rf "$data"' EXIT INT TERM
    uv run st run "http://127.0.0.1:$port/schema/openapi.json" --wait-for-schema 60 \
        --checks not_a_server_error --max-time {{SECONDS}} --workers 2

# One node holding one W20 day, then ten: RSS and day-0 latency at 20M and 200M events, to bench/RESULTS.md.
scale *ARGS: sync
    uv run python -m bench.scale {{ARGS}}

# Durable ingest of one format (--format json|ndjson|arrow) on a fresh node, for A/B runs; printed only.
ingest-bench *ARGS: sync
    uv run python -m bench.ingest {{ARGS}}

# Ten minutes of ingest at half the measured maximum with queries running; RSS and latency to bench/SOAK.md.
soak *ARGS: sync
    uv run python -m bench.soak {{ARGS}}
