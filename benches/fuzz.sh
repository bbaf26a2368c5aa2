#!/usr/bin/env bash
# benches/fuzz.sh SECONDS — runs every fuzz target for SECONDS each, one
# after the other, and prints the executions per target.
#
# Targets (bodies in fuzz/targets.rs): config (YAML -> config::parse),
# duration (humantime through the config), jwt (Authorizer::verify on
# arbitrary strings and on signed tokens with random claims), ws (client
# text messages through a real WebSocket; stable harness only: it needs a
# running fusebox).
#
# With a nightly toolchain and cargo-fuzz installed, config/duration/jwt run
# coverage-guided under libFuzzer (new inputs go to fuzz/work/<target>, the
# checked-in seeds stay in fuzz/corpus/<target>, crashes in
# fuzz/artifacts/<target>); otherwise (or with FUZZ_STABLE=1) they run as
# the proptest harness of tests/fuzz_smoke.rs in release mode. The ws target
# and the round-trip property always run on the stable harness.
#
# Must not: write into fuzz/corpus (the seeds), or download a toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:?usage: benches/fuzz.sh SECONDS}"
NICE="${NICE:-nice -n 10}"
results=()

have_libfuzzer() {
    [ -z "${FUZZ_STABLE:-}" ] && rustup toolchain list 2>/dev/null | grep -q '^nightly' && cargo +nightly fuzz --version >/dev/null 2>&1
}

stable() {
    local test="$1" name="$2"
    local out
    out=$(FUSEBOX_FUZZ_SECONDS="$SECONDS_PER_TARGET" $NICE cargo test --release --test fuzz_smoke -- --exact "$test" --nocapture 2>&1) || {
        echo "$out" | tail -40
        results+=("$name: FAILED (stable harness; see above)")
        return
    }
    local execs
    execs=$(echo "$out" | sed -n "s/^fuzz target $name: \([0-9]*\) executions$/\1/p" | tail -1)
    results+=("$name: ${execs:-?} executions in ${SECONDS_PER_TARGET}s (stable proptest harness)")
}

libfuzzer() {
    local name="$1"
    mkdir -p "fuzz/work/$name"
    local log="fuzz/work/$name.log"
    if (cd fuzz && $NICE cargo +nightly fuzz run -O "$name" "work/$name" "corpus/$name" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -rss_limit_mb=4096) >"$log" 2>&1; then
        local execs
        execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\)/\1/p' "$log" | tail -1)
        results+=("$name: ${execs:-?} executions in ${SECONDS_PER_TARGET}s (libFuzzer, coverage-guided; corpus $(ls "fuzz/work/$name" | wc -l) inputs)")
    else
        tail -40 "$log"
        results+=("$name: CRASH or error (libFuzzer; log $log, inputs in fuzz/artifacts/$name)")
    fi
}

# The stable harness's test for each cargo-fuzz target.
stable_test() {
    case "$1" in
        config) echo fuzz_config_loader ;;
        duration) echo fuzz_duration_parser ;;
        jwt) echo fuzz_jwt_verify ;;
        h1_response) echo fuzz_h1_response ;;
    esac
}

for t in config duration jwt h1_response; do
    if have_libfuzzer; then libfuzzer "$t"; else stable "$(stable_test "$t")" "$t"; fi
done
stable fuzz_websocket_client_messages ws

echo
echo "== fuzz: ${SECONDS_PER_TARGET}s per target =="
printf '%s\n' "${results[@]}"
