#!/usr/bin/env bash
# The same run on one machine and on a Ballista cluster (feature `ballista`), side by side.
#
#   bench/cluster.sh [N ...]              # N = customers; default: 200000
#   SEGMENTER_BIN=target/release/segmenter bench/cluster.sh 20000   # skip the release build
#
# For each N: generate once into bench/work/cluster-N/data (reused while its marker matches N,
# seed and the generator source). Then, each under /usr/bin/time -v after reading the inputs
# into the page cache, each into an empty output root (a first run: every file read, the
# models fitted):
#   1. `segmenter run --date D` with engine.kind = "local" (the peer of the cluster runs);
#   2. for each E in BENCH_EXECUTORS (default "1 2"): a scheduler and E executors of the same
#      binary on 127.0.0.1, each executor with nproc/E cores (so that the cluster has the
#      machine's cores, as the local run has), and `segmenter run --date D` with
#      engine.kind = "ballista"; the cluster is stopped after the run.
# Prints wall time, the ratio to the local run, the driver's peak RSS and each executor's
# (VmHWM of /proc/PID/status before it is stopped), the stages of each run (the manifests'
# `timings`) and whether each cluster run published the local run's bytes
# (bench/same_outputs.py). The table is also written to bench/work/results-cluster-N.txt.
#
# One machine plays every role here: the figures measure what Ballista adds (planning,
# shuffles over Arrow Flight, task scheduling), not what more machines would take away.
#
# Environment: SEGMENTER_BIN (built with --features ballista), BENCH_DATE (2026-10-31),
# BENCH_SEED (42), BENCH_EXECUTORS ("1 2").
set -euo pipefail

die() { echo "cluster.sh: error: $*" >&2; exit 1; }
say() { echo "cluster.sh: $*" >&2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/.." && pwd))"
DATE="${BENCH_DATE:-2026-10-31}"
SEED="${BENCH_SEED:-42}"
read -r -a EXECUTORS <<<"${BENCH_EXECUTORS:-1 2}"
WORK="$ROOT/bench/work"
GENERATOR="$(cat "$ROOT"/src/generate/*.rs | md5sum | cut -c1-12)"
CORES="$(nproc)"

NS=("$@")
[ ${#NS[@]} -gt 0 ] || NS=(200000)
for n in "${NS[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$n'"
done
for e in "${EXECUTORS[@]}"; do
    [[ "$e" =~ ^[1-9][0-9]*$ ]] || die "BENCH_EXECUTORS must hold positive integers, got '$e'"
done

TIME=/usr/bin/time
"$TIME" -v true >/dev/null 2>&1 || die "GNU time is required at $TIME (apt-get install time)"
PY="$("$ROOT/scripts/setup-python.sh" | tail -n 1)"
[ -x "$PY" ] || die "scripts/setup-python.sh did not yield a python ($PY)"

if [ -n "${SEGMENTER_BIN:-}" ]; then
    BIN="$(command -v "$SEGMENTER_BIN" || true)"
    [ -n "$BIN" ] && [ -x "$BIN" ] || die "SEGMENTER_BIN=$SEGMENTER_BIN is not an executable"
    BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
else
    say "building: cargo build --release --locked --features ballista (20+ minutes from clean)"
    (cd "$ROOT" && cargo build --release --locked --features ballista)
    BIN="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
        "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release/segmenter"
fi
"$BIN" scheduler --help >/dev/null 2>&1 || die "$BIN was built without --features ballista"

toml_str() { local s="${1//\\/\\\\}"; printf '"%s"' "${s//\"/\\\"}"; }
warm() { find "$1/orders" "$1/events" "$1/customers" -type f -name '*.parquet' -exec cat {} + >/dev/null; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wall() { awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.1f", s }' "$1"; }
rss() { awk '/Maximum resident set size/ { printf "%d", $NF / 1024 }' "$1"; }
hwm() { awk '/VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }

PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap stop_all EXIT

for N in "${NS[@]}"; do
    W="$WORK/cluster-$N"
    DATA="$W/data"
    mkdir -p "$W"
    MARK="customers=$N seed=$SEED generator=$GENERATOR"
    if [ -f "$DATA/.complete" ] && [ "$(cat "$DATA/.complete")" = "$MARK" ]; then
        say "N=$N: reusing $DATA"
    else
        rm -rf "$DATA"
        say "N=$N: generating $DATA"
        "$BIN" generate --out "$DATA" --customers "$N" --seed "$SEED" >"$W/generate.log" 2>&1 ||
            die "generate failed (log: $W/generate.log)"
        echo "$MARK" >"$DATA/.complete"
    fi

    pipeline() { # OUT FILE [ENGINE-URL]
        {
            printf '[inputs]\norders = %s\nevents = %s\ncustomers = %s\n' \
                "$(toml_str "$DATA/orders/")" "$(toml_str "$DATA/events/")" "$(toml_str "$DATA/customers/")"
            printf '[output]\nroot = %s\n' "$(toml_str "$1")"
            if [ -n "${3:-}" ]; then printf '[engine]\nkind = "ballista"\nurl = "%s"\n' "$3"; fi
        } >"$2"
    }
    run() { # NAME PIPELINE
        local rc=0
        rm -rf "$W/out-$1"
        warm "$DATA"
        say "N=$N: running $1"
        "$TIME" -v -o "$W/time-$1.txt" "$BIN" run --pipeline "$2" --date "$DATE" >"$W/run-$1.log" 2>&1 || rc=$?
        [ "$rc" -eq 0 ] || { tail -n 30 "$W/run-$1.log" >&2; die "$1 failed with exit $rc (log: $W/run-$1.log)"; }
    }

    pipeline "$W/out-local" "$W/local.toml"
    run local "$W/local.toml"
    ROWS=("local|-|$(wall "$W/time-local.txt")|1.00|$(rss "$W/time-local.txt")|-|-")
    RUNS=(local)

    for E in "${EXECUTORS[@]}"; do
        NAME="cluster-$E"
        PORT="$(free_port)"
        RUST_LOG=info "$BIN" scheduler --bind "127.0.0.1:$PORT" --external-host 127.0.0.1 \
            >"$W/$NAME-scheduler.log" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done
        EXEC_PIDS=()
        PER=$(( CORES / E > 0 ? CORES / E : 1 ))
        for i in $(seq 1 "$E"); do
            mkdir -p "$W/$NAME-work-$i"
            RUST_LOG=info "$BIN" executor --scheduler "127.0.0.1:$PORT" --bind-host 127.0.0.1 \
                --external-host 127.0.0.1 --port "$(free_port)" --grpc-port "$(free_port)" \
                --cores "$PER" --work-dir "$W/$NAME-work-$i" >"$W/$NAME-executor-$i.log" 2>&1 &
            PIDS+=($!)
            EXEC_PIDS+=($!)
        done
        for _ in $(seq 300); do
            n="$(curl -s "http://127.0.0.1:$PORT/api/executors" | grep -o '"last_seen"' | wc -l || true)"
            [ "$n" -ge "$E" ] && break
            sleep 0.2
        done
        [ "$n" -ge "$E" ] || die "$E executors did not register (logs: $W/$NAME-*.log)"
        pipeline "$W/out-$NAME" "$W/$NAME.toml" "df://127.0.0.1:$PORT"
        run "$NAME" "$W/$NAME.toml"
        EX_RSS=""
        for p in "${EXEC_PIDS[@]}"; do EX_RSS="${EX_RSS:+$EX_RSS + }$(hwm "$p")"; done
        JOBS="$(curl -s "http://127.0.0.1:$PORT/api/jobs" | grep -o '"job_name":"segmenter"' | wc -l || true)"
        stop_all
        SAME="$("$PY" "$ROOT/bench/same_outputs.py" "$W/out-local" "$W/out-$NAME" "$DATE" 2>&1 || true)"
        L="$(wall "$W/time-local.txt")"
        C="$(wall "$W/time-$NAME.txt")"
        ROWS+=("$E executor(s)|$PER|$C|$(awk -v c="$C" -v l="$L" 'BEGIN { printf "%.2f", c / l }')|$(rss "$W/time-$NAME.txt")|$EX_RSS|$JOBS jobs; $SAME")
        RUNS+=("$NAME")
    done

    {
        echo "N=$N customers, $CORES cores, run --date $DATE (first run: every file read, models fitted)"
        echo
        echo "| engine | cores per executor | wall s | / local | driver peak RSS MiB | executors' peak RSS MiB | outputs |"
        echo "|---|---|---|---|---|---|---|"
        for r in "${ROWS[@]}"; do echo "| ${r//|/ | } |"; done
        echo
        "$PY" - "$DATE" "${RUNS[@]/#/$W/out-}" <<'EOF'
import json, os, sys
date, roots = sys.argv[1], sys.argv[2:]
ms = [json.load(open(os.path.join(r, "_runs", date, "manifest.json"))) for r in roots]
order = ["inputs", "features", "models", "clustering", "segments", "write"]
stages = [s for s in order if s in ms[0]["timings"]] + [s for s in ms[0]["timings"] if s not in order]
print("| stage | " + " | ".join(os.path.basename(r).removeprefix("out-") for r in roots) + " |")
print("|---" * (len(roots) + 1) + "|")
for s in stages:
    print(f"| {s} | " + " | ".join(f"{m['timings'].get(s, float('nan')):.2f}" for m in ms) + " |")
EOF
    } >"$WORK/results-cluster-$N.txt"
    echo
    cat "$WORK/results-cluster-$N.txt"
done
