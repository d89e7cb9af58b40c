#!/usr/bin/env bash
# WordNet 3.0 (Debian wordnet-base) for METEOR, with lexnames rebuilt for NLTK.
exec "$(dirname "$0")/../install-wordnet.sh"
