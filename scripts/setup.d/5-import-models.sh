#!/usr/bin/env bash
# setup-step: import-models: SmolLM2 and multilingual-e5-small to HF layout (builds the dev binary)
# Last: the only step that compiles (minutes on a fresh clone); the others do not need it.
exec "$(dirname "$0")/../import-models.sh" "${1:-run}"
