#!/usr/bin/env bash
# aio-pika's own test suite (PyPI sdist aio-pika==10.2.1, with aiormq==7.2.4),
# run against the broker at $AMQP_URL.
#   suites/aio-pika.sh install   fetch the sdist and the pinned test deps (idempotent)
#   suites/aio-pika.sh run       run it; prints an INTEROP-RESULT line
#   suites/aio-pika.sh counts    partial counts of a killed run
SUITE=aio-pika
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

VERSION=10.2.1
SRC="$CACHE/aio-pika/aio_pika-$VERSION"

install() {
  ensure_venv
  if ! { stamp_ok aio-pika "$VERSION" && [[ -f "$SRC/tests/conftest.py" ]]; }; then
    log "fetching aio-pika==$VERSION sdist"
    rm -rf "$CACHE/aio-pika" && mkdir -p "$CACHE/aio-pika/dl"
    # --no-binary for aio-pika only: the wheel has no tests/.
    "$VENV_PY" -m pip download --quiet --disable-pip-version-check --no-input \
      --no-deps --no-binary aio-pika "aio-pika==$VERSION" -d "$CACHE/aio-pika/dl"
    tar -xzf "$CACHE/aio-pika/dl/aio_pika-$VERSION.tar.gz" -C "$CACHE/aio-pika"
    [[ -f "$SRC/tests/conftest.py" ]] || die "sdist has no tests/conftest.py"
    stamp_set aio-pika "$VERSION"
  fi
  # aio_pika/__init__.py reads its version from the installed distribution's
  # metadata, so the same sdist is also installed into the venv (its
  # dependencies are already there, pinned); the tests import the sdist's copy.
  if [[ "$("$VENV_PY" -c 'import importlib.metadata as m; print(m.version("aio-pika"))' 2>/dev/null)" != "$VERSION" ]]; then
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
      "$CACHE/aio-pika/dl/aio_pika-$VERSION.tar.gz"
  fi
}

run() {
  require_url
  ensure_venv
  [[ -d "$SRC/tests" ]] || die "not installed: run '$0 install' first"
  local args=() id xml="$RESULTS/aio-pika.junit.xml" log="$RESULTS/aio-pika.log" rc=0
  local cache_dir="$CACHE/aio-pika/pytest-cache"
  while IFS= read -r id; do args+=(--deselect "$id"); done < <(deselected aio-pika)
  rm -rf "$xml" "$cache_dir" "$RESULTS/aio-pika.retry."*
  cd "$SRC"
  # -p aiopika_broker: hands the suite's Docker fixtures the broker at $AMQP_URL
  #   (lib/aiopika_broker.py).  cache_dir: outside the sdist; it records the
  #   failed node ids for the retry below.
  # --timeout: a hang guard only (pytest-timeout); the slowest test takes ~35 s
  #   on a loaded machine.
  local pytest=(env PYTHONPATH="$LIB${PYTHONPATH:+:$PYTHONPATH}" AMQP_URL="$AMQP_URL"
    "$VENV_PY" -m pytest -p aiopika_broker -o cache_dir="$cache_dir" -o log_cli=false
    -v -rfE --timeout=120)
  # -v: one line per test in the log, so that a run killed by the driver's
  # time limit (pytest under aiomisc ignores SIGINT) still has counts.
  "${pytest[@]}" tests --junitxml="$xml" "${args[@]}" >"$log" 2>&1 || rc=$?
  tail -n 30 "$log" >&2
  [[ -f "$xml" ]] || { log "pytest exited $rc without a JUnit report"; emit_counts 0 1 0 0; return; }
  # pytest's summary line names the deselected count ("..., 137 deselected in ...").
  local desel
  desel="$(grep -Eo '[0-9]+ deselected' "$log" | tail -n1 | cut -d' ' -f1 || true)"
  # Failed tests listed in flaky.txt get one more run, on their own.
  local retry=() retry_counts=""
  if [[ -f "$cache_dir/v/cache/lastfailed" ]]; then
    mapfile -t retry < <("$PY" -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))))' \
      "$cache_dir/v/cache/lastfailed" | flaky_failures aio-pika prefix)
  fi
  if (( ${#retry[@]} )); then
    log "retrying ${#retry[@]} known-flaky test(s): ${retry[*]}"
    "${pytest[@]}" -p no:cacheprovider --junitxml="$RESULTS/aio-pika.retry.junit.xml" "${retry[@]}" \
      >"$RESULTS/aio-pika.retry.log" 2>&1 || true
    tail -n 5 "$RESULTS/aio-pika.retry.log" >&2
    [[ -f "$RESULTS/aio-pika.retry.junit.xml" ]] &&
      retry_counts="$("$PY" "$LIB/counts.py" junit "$RESULTS/aio-pika.retry.junit.xml")"
  fi
  # pytest exit codes: 0 all passed, 1 some failed; anything else is an error
  # (interrupted, internal error, usage error) that junit may not show.
  (( rc > 1 )) && log "pytest exited $rc"
  emit_from "$("$PY" "$LIB/counts.py" junit "$xml")" "${desel:-0}" "$(( rc > 1 ))" "$retry_counts"
}

# Counts from a run that was killed (by the driver's time limit) before pytest
# wrote its JUnit report: every test that finished, from the -v log.
counts() {
  local desel  # from "collected 1107 items / 138 deselected / 969 selected"
  desel="$(grep -m1 -Eo '/ [0-9]+ deselected' "$RESULTS/aio-pika.log" | grep -Eo '[0-9]+' || echo 0)"
  emit_from "$("$PY" "$LIB/counts.py" pytestlog "$RESULTS/aio-pika.log")" "$desel" 1
}

# One line, so that bash has read all of it before running it: editing this
# file while it runs cannot make bash pick up half of the new text.
"${1:?usage: $0 install|run}"; exit
