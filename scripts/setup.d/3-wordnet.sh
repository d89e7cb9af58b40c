#!/usr/bin/env bash
# setup-step: wordnet: WordNet 3.0 (Debian wordnet-base) for METEOR, NLTK data dir with lexnames
exec "$(dirname "$0")/../install-wordnet.sh" "${1:-run}"
