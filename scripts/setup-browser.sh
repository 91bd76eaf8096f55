#!/usr/bin/env bash
# Install what the report test (tests/it/report.rs) drives: Debian's Chromium (apt, as root)
# and playwright-core (pinned, from npm, into <repo>/.browser). Prints that directory as the
# last stdout line; the test finds it through SEGMENTER_BROWSER.
#
#   SEGMENTER_BROWSER="$(scripts/setup-browser.sh)" cargo test
#
# Idempotent. Needs apt-get (as root) when /usr/bin/chromium is missing, and node and npm.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${SEGMENTER_BROWSER_DIR:-$ROOT/.browser}"
PLAYWRIGHT=1.64.1
if [ ! -x /usr/bin/chromium ]; then
    [ "$(id -u)" = 0 ] || { echo "setup-browser: /usr/bin/chromium is missing; as root: apt-get install chromium" >&2; exit 1; }
    echo "setup-browser: installing Debian's chromium" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium >&2; }
fi
command -v npm >/dev/null || { echo "setup-browser: npm not found (Debian: apt-get install nodejs npm)" >&2; exit 1; }
mkdir -p "$DIR"
if ! { [ -f "$DIR/node_modules/playwright-core/package.json" ] &&
       grep -q "\"version\": \"$PLAYWRIGHT\"" "$DIR/node_modules/playwright-core/package.json"; }; then
    echo "setup-browser: installing playwright-core@$PLAYWRIGHT into $DIR" >&2
    [ -f "$DIR/package.json" ] || echo '{"private": true}' > "$DIR/package.json"
    npm install --prefix "$DIR" --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT" >&2
fi
echo "$DIR"
