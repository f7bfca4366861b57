#!/usr/bin/env bash
# scenarios/crash_test.py: kill -9 the WarrenMQ binary at random moments while
# producers publish persistent messages with confirms; every confirmed message
# must survive, exactly once, in order. It starts its own broker (the binary
# built by interop-tests/run), so it ignores AMQP_URL.
#   suites/crash.sh install | run
SUITE=crash
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

install() { ensure_venv; }

run() {
  ensure_venv
  local binary="${WARRENMQ_BINARY:-${CARGO_TARGET_DIR:-$INTEROP_DIR/../target}/release/warrenmq}"
  [[ -x "$binary" ]] || die "no WarrenMQ binary at $binary (build it first)"
  local log="$RESULTS/crash.log" rc=0
  "$VENV_PY" "$INTEROP_DIR/scenarios/crash_test.py" "$binary" >"$log" 2>&1 || rc=$?
  cat "$log" >&2
  emit_from "$("$PY" "$LIB/counts.py" plain "$log")" 0 "$(( rc != 0 ))"
}

# One line, so that bash has read all of it before running it.
"${1:?usage: $0 install|run}"; exit
