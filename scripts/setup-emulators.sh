#!/usr/bin/env bash
# Install the object-store emulators the cloud tests (tests/it/cloud.rs) start: Azurite (the
# Azure Blob Storage emulator) and @azure/storage-blob (to create containers and move test
# files), pinned, from npm into <repo>/.emulators. Prints that directory as the last stdout
# line; the tests find it through SEGMENTER_EMULATORS.
#
#   SEGMENTER_EMULATORS="$(scripts/setup-emulators.sh)" cargo test
#
# Idempotent. Needs node and npm (Debian: nodejs, npm). Google Cloud Storage has no emulator
# here that object_store can use (see README, "Object storage"), so it is not installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${SEGMENTER_EMULATORS_DIR:-$ROOT/.emulators}"
AZURITE=3.35.0
BLOB_SDK=12.32.0
command -v npm >/dev/null || { echo "setup-emulators: npm not found (Debian: apt-get install nodejs npm)" >&2; exit 1; }
mkdir -p "$DIR"
have() { [ -f "$DIR/node_modules/$1/package.json" ] && grep -q "\"version\": \"$2\"" "$DIR/node_modules/$1/package.json"; }
if ! have azurite "$AZURITE" || ! have @azure/storage-blob "$BLOB_SDK"; then
    echo "setup-emulators: installing azurite@$AZURITE and @azure/storage-blob@$BLOB_SDK into $DIR" >&2
    [ -f "$DIR/package.json" ] || echo '{"private": true}' > "$DIR/package.json"
    npm install --prefix "$DIR" --no-audit --no-fund --silent "azurite@$AZURITE" "@azure/storage-blob@$BLOB_SDK" >&2
fi
echo "$DIR"
