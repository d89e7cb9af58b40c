#!/usr/bin/env bash
# Installs what the project needs beyond the Rust toolchain, idempotently. Safe to rerun.
# Everything comes from the package registries (Debian, PyPI); nothing is fetched at test time.
set -euo pipefail
cd "$(dirname "$0")/.."

# Rust components used by CI (present on the standard toolchain; checked, not downloaded).
for tool in "cargo fmt" "cargo clippy"; do
  if ! $tool --version >/dev/null 2>&1; then
    echo "setup: '$tool' is missing; install it with: rustup component add ${tool#cargo }" >&2
    exit 1
  fi
done

for step in scripts/setup.d/*.sh; do
  [ -e "$step" ] || continue
  echo "setup: $step"
  bash "$step"
done
echo "setup: done"
