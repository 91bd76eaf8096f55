#!/usr/bin/env bash
# The same runs on one machine and on a Ballista cluster (feature `ballista`), side by side.
#
#   bench/cluster.sh [N ...]              # N = customers; default: 200000
#   SEGMENTER_BIN=target/release/segmenter bench/cluster.sh 20000   # skip the release build
#
# For each N: generate once into bench/work/cluster-N/data the shop as it stood at the end of
# D (`generate --until D`) and into bench/work/cluster-N/day the rows of D+1 (`--add-day`),
# as bench/compare.sh does (reused while their markers match). Start, for each E in
# BENCH_EXECUTORS (default "1 2"), a scheduler and E executors of the same binary on
# 127.0.0.1, each executor with nproc/E cores (so that every cluster has the machine's cores,
# as the local run has). Then, each under /usr/bin/time -v after reading the inputs into the
# page cache, with engine.kind = "local" (the peer of the cluster runs) and on each cluster:
#   1. `segmenter run --date D` into an empty output root (the refit night: every file read,
#      the models fitted);
#   2. D+1's files are added; `segmenter run --date D+1` (the night: D's state and models).
# Prints wall times, the ratios to the local runs, the driver's peak RSS and each executor's
# (VmHWM of /proc/PID/status before it is stopped), the stages of every run (the manifests'
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
NEXT="$(date -u -d "$DATE + 1 day" +%F)" || die "BENCH_DATE=$DATE is not a date"
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
    say "building: cargo build --release --locked --features ballista (about 36 minutes from clean)"
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
per_executor() { echo $(( CORES / $1 > 0 ? CORES / $1 : 1 )); }

PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap stop_all EXIT

# start_cluster NAME E W: a scheduler and E executors; sets PORT and EXEC (the executors' pids).
start_cluster() {
    local name="$1" e="$2" w="$3" n=0
    PORT="$(free_port)"
    RUST_LOG=info "$BIN" scheduler --bind "127.0.0.1:$PORT" --external-host 127.0.0.1 \
        >"$w/$name-scheduler.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done
    EXEC=""
    for i in $(seq 1 "$e"); do
        rm -rf "$w/$name-work-$i" && mkdir -p "$w/$name-work-$i"
        RUST_LOG=info "$BIN" executor --scheduler "127.0.0.1:$PORT" --bind-host 127.0.0.1 \
            --external-host 127.0.0.1 --port "$(free_port)" --grpc-port "$(free_port)" \
            --cores "$(per_executor "$e")" --work-dir "$w/$name-work-$i" \
            >"$w/$name-executor-$i.log" 2>&1 &
        PIDS+=($!)
        EXEC="$EXEC $!"
    done
    for _ in $(seq 300); do
        n="$(curl -s "http://127.0.0.1:$PORT/api/executors" | grep -o '"last_seen"' | wc -l || true)"
        [ "$n" -ge "$e" ] && return 0
        sleep 0.2
    done
    die "$e executors did not register (logs: $w/$name-*.log)"
}

for N in "${NS[@]}"; do
    W="$WORK/cluster-$N"
    DATA="$W/data"
    DAY="$W/day"
    mkdir -p "$W"
    MARK="customers=$N seed=$SEED end_date=$NEXT until=$DATE generator=$GENERATOR"
    if [ -f "$DATA/.complete" ] && [ "$(cat "$DATA/.complete")" = "$MARK" ] &&
        [ -f "$DAY/.complete" ] && [ "$(cat "$DAY/.complete")" = "$MARK" ]; then
        say "N=$N: reusing $DATA and $DAY"
    else
        rm -rf "$DATA" "$DAY"
        say "N=$N: generating $DATA and $DAY"
        "$BIN" generate --out "$DATA" --customers "$N" --seed "$SEED" --end-date "$NEXT" \
            --until "$DATE" >"$W/generate.log" 2>&1 || die "generate failed (log: $W/generate.log)"
        mkdir -p "$DAY"/orders "$DAY"/events "$DAY"/customers
        "$BIN" generate --out "$DAY" --customers "$N" --seed "$SEED" --end-date "$NEXT" \
            --add-day "$NEXT" >"$W/generate-day.log" 2>&1 ||
            die "generate --add-day failed (log: $W/generate-day.log)"
        echo "$MARK" >"$DATA/.complete"
        echo "$MARK" >"$DAY/.complete"
    fi
    # The shop as it stood at the end of D: the night's files are not there yet.
    (cd "$DAY" && find orders events customers -type f -name '*.parquet') | while read -r f; do
        rm -f "$DATA/$f"
    done

    pipeline() { # NAME [ENGINE-URL]
        {
            printf '[inputs]\norders = %s\nevents = %s\ncustomers = %s\n' \
                "$(toml_str "$DATA/orders/")" "$(toml_str "$DATA/events/")" "$(toml_str "$DATA/customers/")"
            printf '[output]\nroot = %s\n' "$(toml_str "$W/out-$1")"
            if [ -n "${2:-}" ]; then printf '[engine]\nkind = "ballista"\nurl = "%s"\n' "$2"; fi
        } >"$W/$1.toml"
    }
    run() { # NAME DATE
        local rc=0
        warm "$DATA"
        say "N=$N: running $1 --date $2"
        "$TIME" -v -o "$W/time-$1-$2.txt" "$BIN" run --pipeline "$W/$1.toml" --date "$2" \
            >"$W/run-$1-$2.log" 2>&1 || rc=$?
        [ "$rc" -eq 0 ] || { tail -n 30 "$W/run-$1-$2.log" >&2; die "$1 failed with exit $rc (log: $W/run-$1-$2.log)"; }
    }

    rm -rf "$W"/out-*
    RUNS=(local)
    pipeline local
    declare -A EXECS=() PORTS=()
    for E in "${EXECUTORS[@]}"; do
        start_cluster "cluster-$E" "$E" "$W"
        EXECS[cluster-$E]="$EXEC"
        PORTS[cluster-$E]="$PORT"
        pipeline "cluster-$E" "df://127.0.0.1:$PORT"
        RUNS+=("cluster-$E")
    done

    for name in "${RUNS[@]}"; do run "$name" "$DATE"; done
    # The night: D+1's orders, events and sign-ups arrive.
    cp -r "$DAY/orders" "$DAY/events" "$DAY/customers" "$DATA/"
    for name in "${RUNS[@]}"; do run "$name" "$NEXT"; done

    ROWS=()
    for name in "${RUNS[@]}"; do
        if [ "$name" = local ]; then row="local|-"; else row="$name|$(per_executor "${name#cluster-}")"; fi
        for d in "$DATE" "$NEXT"; do
            L="$(wall "$W/time-local-$d.txt")"
            C="$(wall "$W/time-$name-$d.txt")"
            row="$row|$C|$(awk -v c="$C" -v l="$L" 'BEGIN { printf "%.2f", c / l }')"
        done
        row="$row|$(rss "$W/time-$name-$DATE.txt") / $(rss "$W/time-$name-$NEXT.txt")"
        if [ "$name" = local ]; then
            row="$row|-|-"
        else
            EX_RSS=""
            for p in ${EXECS[$name]}; do EX_RSS="${EX_RSS:+$EX_RSS + }$(hwm "$p")"; done
            JOBS="$(curl -s "http://127.0.0.1:${PORTS[$name]}/api/jobs" | grep -o '"job_name":"segmenter"' | wc -l || true)"
            SAME=""
            for d in "$DATE" "$NEXT"; do
                SAME="$SAME $d: $("$PY" "$ROOT/bench/same_outputs.py" "$W/out-local" "$W/out-$name" "$d" 2>&1 || true);"
            done
            row="$row|$EX_RSS|$JOBS jobs;$SAME"
        fi
        ROWS+=("$row")
    done
    stop_all

    {
        echo "N=$N customers, $CORES cores: run --date $DATE (the refit night, every file read), then --date $NEXT (the night after it)"
        echo
        echo "| engine | cores per executor | D wall s | / local | D+1 wall s | / local | driver peak RSS MiB (D / D+1) | executors' peak RSS MiB | outputs |"
        echo "|---|---|---|---|---|---|---|---|---|"
        for r in "${ROWS[@]}"; do echo "| ${r//|/ | } |"; done
        echo
        "$PY" - "$DATE" "$NEXT" "${RUNS[@]/#/$W/out-}" <<'PY'
import json, os, sys
dates, roots = sys.argv[1:3], sys.argv[3:]
runs = [(os.path.basename(r).removeprefix("out-") + " " + d,
         json.load(open(os.path.join(r, "_runs", d, "manifest.json")))["timings"])
        for d in dates for r in roots]
order = ["inputs", "features", "models", "clustering", "segments", "write"]
stages = [s for s in order if s in runs[0][1]] + [s for s in runs[0][1] if s not in order]
print("| stage | " + " | ".join(name for name, _ in runs) + " |")
print("|---" * (len(runs) + 1) + "|")
for s in stages:
    print(f"| {s} | " + " | ".join(f"{t.get(s, float('nan')):.2f}" for _, t in runs) + " |")
PY
    } >"$WORK/results-cluster-$N.txt"
    echo
    cat "$WORK/results-cluster-$N.txt"
done
