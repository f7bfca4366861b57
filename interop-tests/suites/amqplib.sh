#!/usr/bin/env bash
# amqplib's own test suite (npm tarball amqplib@2.2.0, the last release whose
# tarball ships test/), run with node's built-in test runner.  Its tests dial
# localhost:5672; lib/amqplib-redirect.cjs (a --require preload) sends those
# connections to the broker at $AMQP_URL instead, so no test file is edited.
#   suites/amqplib.sh install | run
SUITE=amqplib
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

VERSION=2.2.0
CLAIRE=0.4.1   # its only test dependency (devDependencies: "claire": "0.4.1")
DIR="$CACHE/amqplib"
PKG="$DIR/package"

install() {
  command -v node >/dev/null || die "node is not installed"
  if stamp_ok amqplib "$VERSION-$CLAIRE" && [[ -d "$PKG/test" && -d "$DIR/node_modules/claire" ]]; then return; fi
  log "fetching amqplib@$VERSION and claire@$CLAIRE from npm"
  rm -rf "$DIR" && mkdir -p "$DIR"
  (cd "$DIR" && npm pack --silent "amqplib@$VERSION" >/dev/null)
  tar -xzf "$DIR/amqplib-$VERSION.tgz" -C "$DIR"
  [[ -d "$PKG/test" ]] || die "amqplib@$VERSION tarball has no test/"
  # Installed beside package/, so that node resolves it from package/test/.
  npm install --silent --prefix "$DIR" --no-save --no-audit --no-fund --ignore-scripts \
    "claire@$CLAIRE" >/dev/null
  stamp_set amqplib "$VERSION-$CLAIRE"
}

run() {
  require_url
  [[ -z "$(deselected amqplib)" ]] || die "deselection is not supported for amqplib (node 20 has no --test-skip-pattern)"
  local xml="$RESULTS/amqplib.junit.xml" log="$RESULTS/amqplib.log" rc=0 hostport host port
  # Host and port of $AMQP_URL (amqp://user:pass@host:port/vhost).
  hostport="$("$PY" -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(p.hostname or "localhost", p.port or 5672)' "$AMQP_URL")"
  host="${hostport% *}" port="${hostport#* }"
  case "$host" in localhost|127.0.0.1|::1) host="" ;; esac
  rm -f "$xml"
  cd "$PKG"
  # Upstream's script is `node --test --test-timeout=1000`; node 20 applies
  # --test-timeout to each whole test file too, so a per-test 1 s limit would
  # time out entire files: use a generous hang guard instead.
  AMQPLIB_TARGET_PORT="$port" AMQPLIB_TARGET_HOST="$host" \
    node --require "$LIB/amqplib-redirect.cjs" --test --test-timeout=120000 \
      --test-reporter=spec --test-reporter-destination=stdout \
      --test-reporter=junit --test-reporter-destination="$xml" \
      test/*.test.js >"$log" 2>&1 || rc=$?
  tail -n 12 "$log" >&2
  [[ -f "$xml" ]] || { log "node exited $rc without a JUnit report"; emit_counts 0 1 0 0; return; }
  local counts timed_out; counts="$("$PY" "$LIB/counts.py" junit "$xml")"
  # A hang makes node cancel the rest of that file, and those tests are not
  # counted at all: say so (each such file counts as one failure).
  timed_out="$( (grep "^✖ .*\.test\.js (" "$log" || true) | sort -u | wc -l)"
  if (( timed_out > 0 )); then
    echo "INTEROP-NOTE $timed_out test file(s) timed out: their remaining tests did not run"
  fi
  # node exits 1 when a test failed; a non-zero exit with no failed test case
  # (a crash between tests) still counts as a failure.
  emit_from "$counts" 0 "$(( rc != 0 ))"
}

# One line, so that bash has read all of it before running it: editing this
# file while it runs cannot make bash pick up half of the new text.
"${1:?usage: $0 install|run}"; exit
