#!/bin/sh
# setup-step: fonts: fontconfig + DejaVu from Debian, for the plots' text
# plotters' `ttf` feature finds a sans-serif font through fontconfig (build: libfontconfig1-dev
# + pkg-config; run: a font such as DejaVu). `check`: all installed; `run`: apt-get installs
# what is missing (apt itself is resumable).
set -eu
missing=""
for pkg in fontconfig libfontconfig1-dev pkg-config fonts-dejavu-core; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $pkg"
done
if [ "${1:-run}" = check ]; then
    [ -z "$missing" ] && fc-match sans-serif >/dev/null 2>&1
    exit
fi
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends $missing
fi
fc-match sans-serif >/dev/null
