#!/usr/bin/env bash
# setup-step: toolchain: cargo fmt and clippy (checked, not downloaded)
# Rust components CI uses; present on the standard toolchain. Nothing to install here: a missing
# one says how to add it.
set -euo pipefail
for tool in "cargo fmt" "cargo clippy"; do
    if ! $tool --version >/dev/null 2>&1; then
        echo "setup: '$tool' is missing; install it with: rustup component add ${tool#cargo }" >&2
        exit 1
    fi
done
