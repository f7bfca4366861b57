#!/usr/bin/env bash
# aio-pika's own test suite (PyPI sdist aio-pika==10.2.1, with aiormq==7.2.4),
# run against the broker at $AMQP_URL.
#   suites/aio-pika.sh install   fetch the sdist and the pinned test deps (idempotent)
#   suites/aio-pika.sh run       run it; prints an INTEROP-RESULT line
SUITE=aio-pika
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

VERSION=10.2.1
SRC="$CACHE/aio-pika/aio_pika-$VERSION"

install() {
  ensure_venv
  if stamp_ok aio-pika "$VERSION" && [[ -d "$SRC/tests" ]]; then return; fi
  log "fetching aio-pika==$VERSION sdist"
  rm -rf "$CACHE/aio-pika" && mkdir -p "$CACHE/aio-pika/dl"
  # --no-binary for aio-pika only: the wheel has no tests/.
  "$VENV_PY" -m pip download --quiet --disable-pip-version-check --no-input \
    --no-deps --no-binary aio-pika "aio-pika==$VERSION" -d "$CACHE/aio-pika/dl"
  tar -xzf "$CACHE/aio-pika/dl/aio_pika-$VERSION.tar.gz" -C "$CACHE/aio-pika"
  [[ -f "$SRC/tests/conftest.py" ]] || die "sdist has no tests/conftest.py"
  stamp_set aio-pika "$VERSION"
}

run() {
  require_url
  local args=() id xml="$RESULTS/aio-pika.junit.xml" log="$RESULTS/aio-pika.log" rc=0
  while IFS= read -r id; do args+=(--deselect "$id"); done < <(deselected aio-pika)
  rm -f "$xml"
  cd "$SRC"
  # -p aiopika_broker: hands the suite's Docker fixtures the broker at $AMQP_URL
  #   (lib/aiopika_broker.py).  -p no:cacheprovider: keep the sdist pristine.
  # --timeout: a hang guard only (pytest-timeout); no test needs 5 minutes.
  PYTHONPATH="$LIB${PYTHONPATH:+:$PYTHONPATH}" AMQP_URL="$AMQP_URL" \
    "$VENV_PY" -m pytest tests -p aiopika_broker -p no:cacheprovider \
      -o log_cli=false -q -rfE --timeout=300 --junitxml="$xml" "${args[@]}" \
      >"$log" 2>&1 || rc=$?
  tail -n 30 "$log" >&2
  [[ -f "$xml" ]] || { log "pytest exited $rc without a JUnit report"; emit_counts 0 1 0 0; return; }
  # pytest's summary line names the deselected count ("..., 137 deselected in ...").
  local desel
  desel="$(grep -Eo '[0-9]+ deselected' "$log" | tail -n1 | cut -d' ' -f1 || true)"
  # pytest exit codes: 0 all passed, 1 some failed; anything else is an error
  # (interrupted, internal error, usage error) that junit may not show.
  (( rc > 1 )) && log "pytest exited $rc"
  emit_from "$("$PY" "$LIB/counts.py" junit "$xml")" "${desel:-0}" "$(( rc > 1 ))"
}

"${1:?usage: $0 install|run}"
