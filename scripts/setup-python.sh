#!/usr/bin/env bash
# Create (or reuse) the repo's Python venv for scripts/check_outputs.py and bench/compare.sh.
#
#   scripts/setup-python.sh            # prints the venv's python path as the last stdout line
#   PY=$(scripts/setup-python.sh)      # typical use from other scripts and CI
#
# Idempotent: when the venv already has every pin of scripts/requirements.txt it installs
# nothing. Progress goes to stderr, so stdout carries only the interpreter path.
# Environment: SEGMENTER_VENV (default <repo>/.venv), PYTHON (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEGMENTER_VENV:-$ROOT/.venv}"
REQ="$ROOT/scripts/requirements.txt"
PYTHON="${PYTHON:-python3}"
VPY="$VENV/bin/python"

log() { echo "setup-python: $*" >&2; }

# True when the venv's interpreter runs and every pinned distribution is installed at its pin.
satisfied() {
    [ -x "$VPY" ] || return 1
    "$VPY" - "$REQ" <<'PYEOF' 2>/dev/null
import sys, importlib.metadata as md
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, want = line.partition("==")
    try:
        have = md.version(name.strip())
    except md.PackageNotFoundError:
        sys.exit(1)
    if want and have != want.strip():
        sys.exit(1)
PYEOF
}

mkdir -p "$(dirname "$VENV")"
# Serialise concurrent callers (parallel CI steps) so they do not pip-install into one venv at once.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV.lock"
    flock 9
fi

if ! satisfied; then
    if [ -e "$VENV" ] && ! "$VPY" -c '' >/dev/null 2>&1; then
        # The interpreter the venv points at is gone (python upgraded or removed): rebuild it,
        # but never delete a directory that is not a venv.
        if [ -f "$VENV/pyvenv.cfg" ]; then
            log "venv at $VENV is broken; recreating it"
            rm -rf "$VENV"
        elif [ -n "$(ls -A "$VENV" 2>/dev/null)" ]; then
            log "error: $VENV exists but is not a working venv; remove it or set SEGMENTER_VENV"
            exit 1
        fi
    fi
    if [ ! -x "$VPY" ]; then
        command -v "$PYTHON" >/dev/null 2>&1 || { log "error: $PYTHON not found (set PYTHON=...)"; exit 1; }
        log "creating $VENV with $("$PYTHON" --version 2>&1)"
        "$PYTHON" -m venv "$VENV" >&2 || {
            log "error: '$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)"
            exit 1
        }
    fi
    log "installing $(grep -v '^\s*#' "$REQ" | grep -v '^\s*$' | tr '\n' ' ' | sed 's/ $//')"
    "$VPY" -m pip install --quiet --disable-pip-version-check --no-input -r "$REQ" >&2
    satisfied || { log "error: packages still missing after pip install (see $REQ)"; exit 1; }
    "$VPY" -c 'import duckdb, pyarrow, pandas, numpy, sklearn' >&2
    log "ready"
fi

echo "$VPY"
