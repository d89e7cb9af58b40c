#!/bin/sh
# Fonts for the report plots: plotters' `ttf` feature finds a sans-serif font through
# fontconfig (build: libfontconfig1-dev + pkg-config; run: a font such as DejaVu).
# Idempotent: apt-get skips what is already installed.
set -eu
missing=""
for pkg in fontconfig libfontconfig1-dev pkg-config fonts-dejavu-core; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends $missing
fi
fc-match sans-serif >/dev/null
