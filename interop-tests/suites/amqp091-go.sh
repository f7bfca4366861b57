#!/usr/bin/env bash
# amqp091-go's own tests, from Debian's golang-github-rabbitmq-amqp091-go-dev
# (which ships its _test.go files), built with Debian's golang-go and
# golang-uber-goleak-dev in GOPATH mode (no module downloads), run with
# `-tags integration` against AMQP_URL.
#   suites/amqp091-go.sh install   copy the sources and compile the test binary
#   suites/amqp091-go.sh run
SUITE=amqp091-go
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

PKG=github.com/rabbitmq/amqp091-go
SYS=/usr/share/gocode
DIR="$CACHE/amqp091-go"
SRC="$DIR/gopath/src/$PKG"
BIN="$DIR/amqp091-go.test"
export GO111MODULE=off GOPATH="$DIR/gopath:$SYS" GOCACHE="$DIR/go-build" GOFLAGS= GOPROXY=off

install() {
  command -v go >/dev/null || die "go is not installed (apt-get install golang-go)"
  [[ -f "$SYS/src/$PKG/integration_test.go" ]] || die "missing $SYS/src/$PKG (apt-get install golang-github-rabbitmq-amqp091-go-dev)"
  [[ -d "$SYS/src/go.uber.org/goleak" ]] || die "missing goleak (apt-get install golang-uber-goleak-dev)"
  local key
  key="$(dpkg-query -W -f='${Version}' golang-github-rabbitmq-amqp091-go-dev golang-uber-goleak-dev 2>/dev/null)-$(go env GOVERSION)"
  if stamp_ok amqp091-go "$key" && [[ -x "$BIN" ]]; then return; fi
  log "building amqp091-go's test binary ($key)"
  rm -rf "$DIR/gopath" "$BIN" && mkdir -p "$(dirname "$SRC")"
  cp -r "$SYS/src/$PKG" "$SRC"
  (cd "$SRC" && go test -c -tags integration -o "$BIN" .)
  stamp_set amqp091-go "$key"
}

run() {
  require_url
  local json="$RESULTS/amqp091-go.json" log="$RESULTS/amqp091-go.log" rc=0 runre='.' n=0
  local -a desel
  mapfile -t desel < <(deselected amqp091-go)
  if (( ${#desel[@]} )); then
    # Go 1.19 has no -test.skip: run every listed test but the deselected ones.
    local all keep
    all="$(cd "$SRC" && "$BIN" -test.list '.*')"
    keep="$(grep -vxF -f <(printf '%s\n' "${desel[@]}") <<<"$all" | paste -sd'|')"
    n="$(grep -cxF -f <(printf '%s\n' "${desel[@]}") <<<"$all" || true)"
    runre="^($keep)\$"
  fi
  rm -f "$RESULTS/amqp091-go.retry.json"
  cd "$SRC"
  gotest() { # JSON-FILE RUN-REGEX
    AMQP_URL="$AMQP_URL" go tool test2json -t -p "$PKG" \
      "$BIN" -test.v -test.count=1 -test.timeout=12m -test.run "$2" >"$1" 2>>"$log"
  }
  : >"$log"
  gotest "$json" "$runre" || rc=$?
  # Failed tests listed in flaky.txt get one more run, on their own.
  local retry=() retry_counts=""
  mapfile -t retry < <("$PY" "$LIB/counts.py" --failures gojson "$json" | sed -n 's/^FAILED //p' |
    flaky_failures amqp091-go exact)
  if (( ${#retry[@]} )); then
    log "retrying ${#retry[@]} known-flaky test(s): ${retry[*]}"
    gotest "$RESULTS/amqp091-go.retry.json" "^($(IFS='|'; echo "${retry[*]}"))\$" || true
    retry_counts="$("$PY" "$LIB/counts.py" gojson "$RESULTS/amqp091-go.retry.json")"
  fi
  "$PY" -c '
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        out = json.loads(line).get("Output")
    except ValueError:
        out = line
    if out:
        sys.stdout.write(out)' "$json" >>"$log"
  grep -E -- '^(--- FAIL|FAIL|ok|PASS)' "$log" | tail -n 30 >&2 || true
  emit_from "$("$PY" "$LIB/counts.py" gojson "$json")" "$n" "$(( rc != 0 ))" "$retry_counts"
}

# One line, so that bash has read all of it before running it: editing this
# file while it runs cannot make bash pick up half of the new text.
"${1:?usage: $0 install|run}"; exit
