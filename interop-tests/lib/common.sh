# Sourced by interop-tests/suites/*.sh.  Paths, a stamp helper for idempotent
# installs, and the deselection list.
set -euo pipefail

INTEROP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIB="$INTEROP_DIR/lib"
CACHE="${INTEROP_CACHE:-$INTEROP_DIR/.cache}"
RESULTS="${INTEROP_RESULTS:-$INTEROP_DIR/results}"
DESELECTED_FILE="${INTEROP_DESELECTED:-$INTEROP_DIR/deselected.txt}"
FLAKY_FILE="${INTEROP_FLAKY:-$INTEROP_DIR/flaky.txt}"
PY="${INTEROP_PYTHON:-python3}"
mkdir -p "$CACHE" "$RESULTS"

log() { printf '[%s] %s\n' "${SUITE:-interop}" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# stamp_ok NAME KEY: true when install step NAME already completed with KEY.
stamp_ok() { [[ -f "$CACHE/.stamp-$1" && "$(cat "$CACHE/.stamp-$1")" == "$2" ]]; }
stamp_set() { printf '%s' "$2" >"$CACHE/.stamp-$1"; }

# deselected SUITE: the test ids deselected for SUITE, one per line.
deselected() { "$PY" "$LIB/deselected.py" "$DESELECTED_FILE" "$1"; }

# flaky_failures SUITE MODE: reads failed test ids on stdin and prints those
# listed in flaky.txt for SUITE (MODE: "prefix" for pytest node ids, "exact").
flaky_failures() {
  "$PY" "$LIB/deselected.py" "$FLAKY_FILE" "$1" --match "$2"
}

# The machine-readable line that interop-tests/run reads (the last one wins).
# RETRIED: tests from flaky.txt that failed, then passed when run again (they
# are counted as passed, and the driver names the count in its table).
emit_counts() { # passed failed skipped deselected [retried]
  printf 'INTEROP-RESULT passed=%d failed=%d skipped=%d deselected=%d retried=%d\n' "$1" "$2" "$3" "$4" "${5:-0}"
}

# emit_from "counts.py output" DESELECTED [BROKEN] [RETRY-COUNTS]
# BROKEN=1 means the runner itself failed (crash, timeout, internal error):
# then at least one failure is reported even if no test case recorded one.
# RETRY-COUNTS: counts.py output of re-running the failed flaky tests; each
# that passed then moves from failed to passed.
emit_from() {
  local passed=0 failed=0 skipped=0 retried=0 kv
  for kv in $1; do
    case "$kv" in
      passed=*) passed=${kv#passed=} ;;
      failed=*) failed=${kv#failed=} ;;
      skipped=*) skipped=${kv#skipped=} ;;
    esac
  done
  # (A runner that exits non-zero because tests failed is not "broken".)
  if [[ "${3:-0}" == 1 ]] && (( failed == 0 )); then failed=1; fi
  for kv in ${4:-}; do
    case "$kv" in passed=*) retried=${kv#passed=} ;; esac
  done
  (( retried > failed )) && retried=$failed
  passed=$((passed + retried)) failed=$((failed - retried))
  emit_counts "$passed" "$failed" "$skipped" "$2" "$retried"
}

require_url() { [[ -n "${AMQP_URL:-}" ]] || die "AMQP_URL is not set"; }

# Python venv shared by the aio-pika and pika-smoke suites (pinned versions).
ensure_venv() {
  local req="$LIB/python-requirements.txt" key
  key="$(sha256sum "$req" | cut -c1-16)-$("$PY" -c 'import sys;print("%d.%d"%sys.version_info[:2])')"
  VENV_PY="$CACHE/venv/bin/python"
  if stamp_ok venv "$key" && [[ -x "$VENV_PY" ]]; then return; fi
  log "creating venv in $CACHE/venv"
  rm -rf "$CACHE/venv"
  "$PY" -m venv "$CACHE/venv"
  "$VENV_PY" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
  stamp_set venv "$key"
}
