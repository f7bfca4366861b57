#!/usr/bin/env bash
# scenarios/pika_smoke.py: a quick end-to-end check with pika (from PyPI).
#   suites/pika-smoke.sh install | run
SUITE=pika-smoke
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

install() { ensure_venv; }

run() {
  require_url
  ensure_venv
  local log="$RESULTS/pika-smoke.log" rc=0
  "$VENV_PY" "$INTEROP_DIR/scenarios/pika_smoke.py" "$AMQP_URL" >"$log" 2>&1 || rc=$?
  cat "$log" >&2
  emit_from "$("$PY" "$LIB/counts.py" plain "$log")" 0 "$(( rc != 0 ))"
}

# One line, so that bash has read all of it before running it: editing this
# file while it runs cannot make bash pick up half of the new text.
"${1:?usage: $0 install|run}"; exit
