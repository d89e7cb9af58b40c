#!/usr/bin/env bash
# Installs WordNet 3.0 for METEOR scoring (stages::metrics) and lays out an NLTK data dir for the
# parity fixture script (stages/tests/fixtures/gen/metrics_parity.py). Idempotent.
#
# - Debian's `wordnet-base` provides the WordNet 3.0 dict files in /usr/share/wordnet (index.*,
#   data.*, *.exc): the Rust loader reads them there (override with FEDP2EFT_WORDNET).
# - NLTK's WordNet reader also needs `lexnames`, which Debian does not ship; it is rebuilt from
#   the lexnames(5WN) man page of the same package (the table of file numbers and names). NLTK
#   >= 3.9 also opens index.sense at start-up (for its OMW version mapping, not for synsets):
#   Debian ships it in `wordnet-sense-index`; only the NLTK data dir gets it.
# - NLTK only reads WordNet from $NLTK_DATA/corpora/wordnet: this script creates that dir with
#   copies of the Debian files (NLTK >= 3.10 refuses symlinks that leave its data dir) plus the
#   rebuilt lexnames.
#
# `install-wordnet.sh check` only checks (exit 0 when all of the above is in place); files are
# written under temporary names and renamed, so an interrupted install is redone by the next run.
#
# Environment:
#   FEDP2EFT_WORDNET   WordNet dict dir (default /usr/share/wordnet)
#   FEDP2EFT_NLTK_DATA NLTK data dir to lay out (default $HOME/.cache/fedp2eft/nltk_data)
set -euo pipefail

WN_DIR="${FEDP2EFT_WORDNET:-/usr/share/wordnet}"
NLTK_DATA_DIR="${FEDP2EFT_NLTK_DATA:-$HOME/.cache/fedp2eft/nltk_data}"
DICT_FILES="index.noun index.verb index.adj index.adv data.noun data.verb data.adj data.adv noun.exc verb.exc adj.exc adv.exc"

have_dict() {
    local f
    for f in $DICT_FILES; do [ -s "$WN_DIR/$f" ] || return 1; done
}

MODE="${1:-run}"

# Every NLTK file present, a real copy equal to its source, and lexnames complete.
nltk_complete() {
    local f src dest
    [ "$(wc -l < "$NLTK_DATA_DIR/corpora/wordnet/lexnames" 2>/dev/null)" = 45 ] || return 1
    for f in $DICT_FILES index.sense; do
        src="$WN_DIR/$f"
        [ "$f" = index.sense ] && src=/usr/share/wordnet/index.sense
        dest="$NLTK_DATA_DIR/corpora/wordnet/$f"
        [ -f "$dest" ] && [ ! -L "$dest" ] && cmp -s "$src" "$dest" || return 1
    done
}
if [ "$MODE" = check ]; then
    have_dict && [ -s /usr/share/wordnet/index.sense ] && nltk_complete
    exit
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! have_dict; then
    if [ "$WN_DIR" != /usr/share/wordnet ]; then
        echo "install-wordnet: $WN_DIR lacks WordNet dict files ($DICT_FILES)" >&2
        exit 1
    fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wordnet-base
    have_dict || { echo "install-wordnet: wordnet-base installed but $WN_DIR is incomplete" >&2; exit 1; }
fi
if [ ! -s /usr/share/wordnet/index.sense ]; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wordnet-sense-index
fi

# The man page may be excluded by dpkg path filters (slim images): then take it from the .deb.
MAN_PAGE=/usr/share/man/man5/lexnames.5WN.gz
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
if [ ! -s "$MAN_PAGE" ]; then
    (cd "$TMP" && apt-get download wordnet-base >/dev/null)
    dpkg-deb --fsys-tarfile "$TMP"/wordnet-base_*.deb | tar -x -C "$TMP" ./usr/share/man/man5/lexnames.5WN.gz
    MAN_PAGE="$TMP/usr/share/man/man5/lexnames.5WN.gz"
fi

# Table rows look like "00<TAB>adj.all<TAB>all adjective clusters"; the lexnames file wants
# "00<TAB>adj.all<TAB>3" with the syntactic category 1 noun, 2 verb, 3 adj, 4 adv.
mkdir -p "$NLTK_DATA_DIR/corpora/wordnet"
zcat "$MAN_PAGE" | awk -F'\t' '
    /^[0-9][0-9]\t/ {
        name = $2; gsub(/[ \t]+$/, "", name)
        split(name, parts, ".")
        cat = (parts[1] == "noun") ? 1 : (parts[1] == "verb") ? 2 : (parts[1] == "adj") ? 3 : (parts[1] == "adv") ? 4 : 0
        if (cat == 0) { print "install-wordnet: unexpected lexname " name > "/dev/stderr"; exit 1 }
        printf "%s\t%s\t%d\n", $1, name, cat
    }' > "$TMP/lexnames"
if [ "$(wc -l < "$TMP/lexnames")" != 45 ]; then
    echo "install-wordnet: expected 45 lexnames rows from $MAN_PAGE, got $(wc -l < "$TMP/lexnames")" >&2
    exit 1
fi
cp "$TMP/lexnames" "$NLTK_DATA_DIR/corpora/wordnet/.lexnames.tmp"
mv "$NLTK_DATA_DIR/corpora/wordnet/.lexnames.tmp" "$NLTK_DATA_DIR/corpora/wordnet/lexnames"
for f in $DICT_FILES index.sense; do
    src="$WN_DIR/$f"
    [ "$f" = index.sense ] && src=/usr/share/wordnet/index.sense
    dest="$NLTK_DATA_DIR/corpora/wordnet/$f"
    if [ -L "$dest" ] || ! cmp -s "$src" "$dest"; then
        cp "$src" "$dest.tmp"
        rm -f "$dest"
        mv "$dest.tmp" "$dest"
    fi
done
echo "install-wordnet: WordNet dict in $WN_DIR; NLTK data dir $NLTK_DATA_DIR (export NLTK_DATA=$NLTK_DATA_DIR)"
