#!/usr/bin/env bash
# lapin's own integration tests (tests/*.rs of the lapin =4.12.3 crate from
# crates.io, built with the Cargo.lock the crate ships), broker from AMQP_ADDR.
#   suites/lapin.sh install   fetch the crate and compile its tests (idempotent)
#   suites/lapin.sh run
# Note: tests/conn_refused.rs expects nothing to listen on localhost:5673.
SUITE=lapin
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

VERSION=4.12.3
DIR="$CACHE/lapin"
SRC="$DIR/lapin-$VERSION"
export CARGO_TARGET_DIR="$DIR/target"
# Runtimes for every test target (tokio.rs, runtime_isolation.rs need "tokio",
# smol.rs needs "smol"); no TLS backend: no test uses TLS, and leaving out the
# default rustls feature saves compiling aws-lc.
FEATURES=(--locked --no-default-features --features tokio,smol)

install() {
  command -v cargo >/dev/null || die "cargo is not installed"
  if ! { stamp_ok lapin-src "$VERSION" && [[ -d "$SRC/tests" ]]; }; then
    log "fetching lapin =$VERSION from crates.io"
    rm -rf "$DIR/fetch" "$SRC" && mkdir -p "$DIR/fetch/src"
    # A throw-away package whose only dependency is lapin: `cargo fetch`
    # downloads the .crate into cargo's registry cache, which we unpack.
    cat >"$DIR/fetch/Cargo.toml" <<TOML
[package]
name = "interop-lapin-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
lapin = { version = "=$VERSION", default-features = false }

[workspace]
TOML
    echo 'fn main() {}' >"$DIR/fetch/src/main.rs"
    cargo fetch --quiet --manifest-path "$DIR/fetch/Cargo.toml"
    local crate
    crate="$(ls -1 "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"lapin-$VERSION.crate" | head -n1)"
    [[ -f "$crate" ]] || die "lapin-$VERSION.crate not found in cargo's registry cache"
    tar -xzf "$crate" -C "$DIR"
    [[ -f "$SRC/Cargo.lock" && -d "$SRC/tests" ]] || die "unexpected crate layout"
    # The crate is unpacked inside this repository: an empty [workspace] table
    # keeps cargo from taking the repository's own manifest for its workspace.
    printf '\n[workspace]\n' >>"$SRC/Cargo.toml"
    stamp_set lapin-src "$VERSION"
  fi
  log "compiling lapin's tests (first time: a few minutes)"
  (cd "$SRC" && cargo test "${FEATURES[@]}" --test '*' --no-run --quiet)
}

run() {
  require_url
  local log="$RESULTS/lapin.log" rc=0 skips=() id n=0
  while IFS= read -r id; do skips+=(--skip "$id"); n=$((n + 1)); done < <(deselected lapin)
  rm -f "$RESULTS/lapin.retry.log"
  # tests/conn_refused.rs dials localhost:5673 and expects "connection refused".
  if (exec 3<>/dev/tcp/127.0.0.1/5673) 2>/dev/null; then
    log "warning: something listens on localhost:5673, so conn_refused will fail"
    echo "INTEROP-NOTE port 5673 in use: conn_refused cannot pass"
  fi
  cd "$SRC"
  # One test binary at a time (cargo's default); --no-fail-fast: run them all.
  AMQP_ADDR="$AMQP_URL" cargo test "${FEATURES[@]}" --test '*' --no-fail-fast -- \
    ${skips[@]+"${skips[@]}"} >"$log" 2>&1 || rc=$?
  grep -E '^(test |     Running|test result)' "$log" | tail -n 60 >&2 || true
  # Failed tests listed in flaky.txt get one more run, on their own.
  local retry=() retry_counts=""
  mapfile -t retry < <("$PY" "$LIB/counts.py" --failures cargo "$log" | sed -n 's/^FAILED //p' |
    flaky_failures lapin exact)
  if (( ${#retry[@]} )); then
    log "retrying ${#retry[@]} known-flaky test(s): ${retry[*]}"
    AMQP_ADDR="$AMQP_URL" cargo test "${FEATURES[@]}" --test '*' --no-fail-fast -- --exact "${retry[@]}" \
      >"$RESULTS/lapin.retry.log" 2>&1 || true
    retry_counts="$("$PY" "$LIB/counts.py" cargo "$RESULTS/lapin.retry.log")"
  fi
  emit_from "$("$PY" "$LIB/counts.py" cargo "$log")" "$n" "$(( rc != 0 ))" "$retry_counts"
}

# One line, so that bash has read all of it before running it: editing this
# file while it runs cannot make bash pick up half of the new text.
"${1:?usage: $0 install|run}"; exit
