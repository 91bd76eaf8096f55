#!/usr/bin/env bash
# Bounded memory at 1,000,000 customers: runs the ignored test tests/it/memory.rs with the
# release binary, once with engine.memory_limit = "2GiB" (peak RSS must stay under 3 GiB) and
# once with "1GiB" (must still finish, spilling; peak RSS printed, and under 3 GiB too).
#
#   bench/memory.sh                        # builds the release binary if SEGMENTER_BIN is unset
#   SEGMENTER_BIN=target/release/segmenter bench/memory.sh
#
# The shop is bench/work/1000000/data (made by `bench/compare.sh 1000000`, or generated here
# with the same seed and date if missing: about 5 GB).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${SEGMENTER_MEMORY_CUSTOMERS:-1000000}"
DATA="$ROOT/bench/work/$N/data"
if [ -z "${SEGMENTER_BIN:-}" ]; then
    cargo build --release --locked --bin segmenter
    SEGMENTER_BIN="$ROOT/target/release/segmenter"
fi
SEGMENTER_BIN="$(cd "$(dirname "$SEGMENTER_BIN")" && pwd)/$(basename "$SEGMENTER_BIN")"
if [ ! -f "$DATA/.complete" ]; then
    rm -rf "$DATA"
    "$SEGMENTER_BIN" generate --out "$DATA" --customers "$N" --seed 42 --end-date 2026-10-31
    echo "customers=$N seed=42 end_date=2026-10-31 (bench/memory.sh)" >"$DATA/.complete"
fi
for limit in 2GiB 1GiB; do
    echo "== engine.memory_limit = $limit, $N customers"
    SEGMENTER_BIN="$SEGMENTER_BIN" SEGMENTER_MEMORY_DATA="$DATA" SEGMENTER_MEMORY_LIMIT="$limit" \
        SEGMENTER_MEMORY_CUSTOMERS="$N" \
        cargo test --locked --test it memory -- --ignored --nocapture
done
