#!/usr/bin/env bash
# Benchmark segmenter against the DuckDB + scikit-learn peer (../shared/peers) on generated data.
#
#   bench/compare.sh [N ...]                 # N = customers; default: 20000 200000
#   SEGMENTER_BIN=target/release/segmenter bench/compare.sh 20000    # skip the release build
#
# For each N: generate data once into bench/work/N/data (reused while its .complete marker
# matches), run `segmenter run --date $BENCH_DATE` and then the peer with --as-of the next day,
# each once under /usr/bin/time -v after reading the input files into the page cache, and print
# wall time, CPU time and peak RSS with segmenter/peer ratios, plus segmenter's stage timings.
# The table is also written to bench/work/results-N.txt; logs stay in bench/work/N/.
# Exits non-zero if a run fails, or (after printing every table) if segmenter's output fails
# scripts/check_outputs.py.
#
# Environment: SEGMENTER_BIN, BENCH_DATE (2026-10-31), BENCH_SEED (42), PEER_THREADS (2).
set -euo pipefail

die() { echo "compare.sh: error: $*" >&2; exit 1; }
say() { echo "compare.sh: $*" >&2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/.." && pwd))"
[ -d "$ROOT/../shared" ] || die "$ROOT/../shared not found (the peer lives in shared/peers/)"
SHARED="$(cd "$ROOT/../shared" && pwd)"
PEER="$SHARED/peers/duckdb_sklearn.py"
[ -f "$PEER" ] || die "peer script $PEER not found"

DATE="${BENCH_DATE:-2026-10-31}"
AS_OF="$(date -u -d "$DATE + 1 day" +%F)" || die "BENCH_DATE=$DATE is not a date"
SEED="${BENCH_SEED:-42}"
THREADS="${PEER_THREADS:-2}"
WORK="$ROOT/bench/work"

NS=("$@")
[ ${#NS[@]} -gt 0 ] || NS=(20000 200000)
for n in "${NS[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$n'"
done

TIME=/usr/bin/time
"$TIME" -v true >/dev/null 2>&1 || die "GNU time is required at $TIME (apt-get install time)"

PY="$("$ROOT/scripts/setup-python.sh" | tail -n 1)"
[ -x "$PY" ] || die "scripts/setup-python.sh did not yield a python ($PY)"

if [ -n "${SEGMENTER_BIN:-}" ]; then
    BIN="$(command -v "$SEGMENTER_BIN" || true)"
    [ -n "$BIN" ] && [ -x "$BIN" ] || die "SEGMENTER_BIN=$SEGMENTER_BIN is not an executable"
    BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
    say "using SEGMENTER_BIN=$BIN"
else
    say "building: cargo build --release --locked (about 19 minutes from clean on 2 cores)"
    (cd "$ROOT" && cargo build --release --locked)
    TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
        "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
    BIN="$TARGET_DIR/release/segmenter"
    [ -x "$BIN" ] || die "release binary $BIN missing after the build"
fi

# TOML basic string with backslashes and double quotes escaped.
toml_str() { local s="${1//\\/\\\\}"; printf '"%s"' "${s//\"/\\\"}"; }

# Read the inputs both tools read into the page cache, so neither pays for cold disk reads.
warm() { find "$1/orders" "$1/events" "$1/customers" -type f -name '*.parquet' -exec cat {} + >/dev/null; }

# run NAME LOG TIMEFILE CMD...: run CMD under /usr/bin/time -v; on failure show the log and stop.
run() {
    local name="$1" log="$2" tfile="$3" rc=0
    shift 3
    say "running $name: $*"
    "$TIME" -v -o "$tfile" "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$log" >&2
        die "$name failed with exit $rc (full log: $log)"
    fi
}

CHECK_FAILED=()
for N in "${NS[@]}"; do
    W="$WORK/$N"
    DATA="$W/data"
    OUT="$W/out"
    mkdir -p "$W"

    MARK="customers=$N seed=$SEED end_date=$DATE"
    if [ -f "$DATA/.complete" ] && [ "$(cat "$DATA/.complete")" = "$MARK" ]; then
        say "N=$N: reusing $DATA ($MARK)"
    else
        rm -rf "$DATA"
        say "N=$N: generating $DATA ($MARK)"
        start=$(date +%s)
        run "segmenter generate" "$W/generate.log" "$W/time-generate.txt" \
            "$BIN" generate --out "$DATA" --customers "$N" --seed "$SEED" --end-date "$DATE"
        for sub in orders events customers; do
            [ -d "$DATA/$sub" ] || die "generate wrote no $DATA/$sub (log: $W/generate.log)"
        done
        echo "$MARK" >"$DATA/.complete"
        say "N=$N: generated in $(($(date +%s) - start)) s"
    fi

    cat >"$W/pipeline.toml" <<EOF
# Written by bench/compare.sh for N=$N; inputs are generated, output is rewritten every run.
[inputs]
orders = $(toml_str "$DATA/orders/")
events = $(toml_str "$DATA/events/")
customers = $(toml_str "$DATA/customers/")

[output]
root = $(toml_str "$OUT/segmenter/")
EOF
    rm -rf "$OUT"
    mkdir -p "$OUT/peer"

    # Segmenter first, then the peer; each starts with the inputs in the page cache.
    warm "$DATA"
    run "segmenter run" "$W/segmenter.log" "$W/time-segmenter.txt" \
        "$BIN" run --pipeline "$W/pipeline.toml" --date "$DATE"
    warm "$DATA"
    run "peer" "$W/peer.log" "$W/time-peer.txt" \
        "$PY" "$PEER" "$DATA" "$OUT/peer/segments.parquet" --as-of "$AS_OF" --threads "$THREADS"

    # Not timed: a benchmark of output that readers cannot use would be meaningless.
    if "$PY" "$ROOT/scripts/check_outputs.py" "$OUT/segmenter" "$DATE" >"$W/check_outputs.log" 2>&1; then
        CHECK="passed"
    else
        CHECK="FAILED: $(grep -m1 '^FAIL' "$W/check_outputs.log" || tail -n 1 "$W/check_outputs.log")"
        say "output check failed; see $W/check_outputs.log"
        CHECK_FAILED+=("$N")
    fi

    "$PY" "$ROOT/bench/report.py" --n "$N" --date "$DATE" --as-of "$AS_OF" --threads "$THREADS" \
        --data "$DATA" --seg-time "$W/time-segmenter.txt" --peer-time "$W/time-peer.txt" \
        --seg-out "$OUT/segmenter" --peer-out "$OUT/peer/segments.parquet" --peer-log "$W/peer.log" \
        --check "$CHECK" >"$WORK/results-$N.txt"
    echo
    cat "$WORK/results-$N.txt"
    echo
    say "N=$N: table in $WORK/results-$N.txt, logs in $W/"
done

if [ ${#CHECK_FAILED[@]} -gt 0 ]; then
    die "timings printed, but segmenter's output failed scripts/check_outputs.py for N=${CHECK_FAILED[*]}"
fi
