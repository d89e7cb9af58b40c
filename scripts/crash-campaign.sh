#!/usr/bin/env bash
# Crash campaign: shows "a killed run never loses or changes work" at many random points.
#
#   scripts/crash-campaign.sh N [MANIFEST]      (default manifests/crash.yaml)
#
# Runs MANIFEST once cleanly into a reference workdir and records every store entry's key and
# output digest (store/<key>/meta.json `output_digest`). Then N trials, each in a fresh workdir:
# `pipeline run` is killed with SIGKILL at a uniformly random time within the clean run's wall
# time (every fifth trial is killed a second time during its resume), resumed to completion, and
# its store (key set and digests) compared with the reference; `pipeline verify` must then find
# nothing. Once per campaign it also checks: a truncated and a bit-flipped store artifact
# (`verify` finds and invalidates it; the next `run` executes exactly that instance, and only
# that entry's meta.json changes), a damaged checkpoint (discarded with a warning, the stage
# restarts, same result) and two concurrent `run`s on one workdir (one refuses with the lock
# error, the store stays sound and identical). Prints `identical/total`; exits 1 on any mismatch.
#
# Builds nothing: the binary is $PIPELINE_BIN, else $CARGO_TARGET_DIR/debug/pipeline (else
# target/debug/pipeline). Environment:
#   CRASH_SEED   seed of the kill times (printed; the same seed and N replay a campaign's draws)
#   CRASH_KEEP=1 keep the campaign directory (workdirs of mismatching trials are always kept)
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: scripts/crash-campaign.sh N [MANIFEST]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
N="$1"
[[ "$N" =~ ^[0-9]+$ ]] || usage
MANIFEST="${2:-manifests/crash.yaml}"
[ -f "$MANIFEST" ] || { echo "crash-campaign: no manifest $MANIFEST" >&2; exit 2; }
BIN="${PIPELINE_BIN:-${CARGO_TARGET_DIR:-target}/debug/pipeline}"
if [ ! -x "$BIN" ]; then
    echo "crash-campaign: no pipeline binary at $BIN; build it first (cargo build --bin pipeline)" \
        "or name it with PIPELINE_BIN" >&2
    exit 2
fi
SEED="${CRASH_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
ROOT="$(mktemp -d "${TMPDIR:-/tmp}/crash-campaign.XXXXXX")"
keep_root="${CRASH_KEEP:-0}"
cleanup() { [ "$keep_root" = 1 ] || rm -rf "$ROOT"; }
trap cleanup EXIT

failures=0
fail() { echo "  MISMATCH: $*"; failures=$((failures + 1)); keep_root=1; }
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

# FIELD of a meta.json (python3, which set-up needs anyway, rather than adding jq).
meta_field() {
    python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))[sys.argv[2]]
print(v if isinstance(v, str) else json.dumps(v))' "$1" "$2"
}

# "key instance output_digest" of every store entry, sorted by key.
listing() {
    python3 -c 'import glob, json, sys
for f in glob.glob(sys.argv[1] + "/store/*/meta.json"):
    m = json.load(open(f))
    print(m["key"], m["instance"], m["output_digest"])' "$1" | sort
}

# How many store entries of a workdir resumed from a checkpoint.
resumed_count() {
    python3 -c 'import glob, json, sys
print(sum(bool(json.load(open(f)).get("resumed")) for f in glob.glob(sys.argv[1] + "/store/*/meta.json")))' "$1"
}

# Compares a workdir's store with the reference; prints the instances that differ.
same_as_reference() {
    local got diff
    got="$(listing "$1")"
    if [ "$got" = "$REF_LISTING" ]; then return 0; fi
    diff="$(diff <(echo "$REF_LISTING") <(echo "$got") | grep '^[<>]' || true)"
    echo "$diff" | awk '{ side = ($1 == "<") ? "reference" : "this run"; print "    " side ": " $3 " key " $2 " digest " $4 }'
    return 1
}

# The i-th uniform draw in [0, 1) of this campaign's seed (Python's Mersenne Twister).
draws() {
    python3 -c 'import random, sys
r = random.Random(int(sys.argv[1]))
for _ in range(int(sys.argv[2])): print("%.6f %.6f" % (r.random(), r.random()))' "$SEED" "$1"
}

# Starts `run` in the background; its pid is in $RUN_PID, its stdout+stderr in $2.
start_run() { "$BIN" run "$MANIFEST" --workdir "$1" >"$2" 2>&1 & RUN_PID=$!; }

verify_clean() {
    local out
    if ! out="$("$BIN" verify "$MANIFEST" --workdir "$1" 2>&1)"; then
        fail "verify found damage in $1:"; echo "$out" | sed 's/^/    /'
        return 1
    fi
}

echo "crash-campaign: N=$N manifest=$MANIFEST seed=$SEED binary=$BIN"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || commit="$commit+uncommitted changes"
echo "crash-campaign: $(date -u '+%Y-%m-%d %H:%M:%S UTC') commit $commit host $(uname -n), $(nproc) CPUs"
echo "crash-campaign: replay with CRASH_SEED=$SEED scripts/crash-campaign.sh $N $MANIFEST"

# --- the reference run ---
REF="$ROOT/reference"
t0="$(now)"
"$BIN" run "$MANIFEST" --workdir "$REF" >"$ROOT/reference.log" 2>&1 \
    || { cat "$ROOT/reference.log" >&2; echo "crash-campaign: the clean run failed" >&2; exit 1; }
WALL="$(calc "$(now) - $t0")"
REF_LISTING="$(listing "$REF")"
ENTRIES="$(echo "$REF_LISTING" | wc -l)"
printf 'reference: %d store entries in %.2f s\n' "$ENTRIES" "$WALL"

# --- N kill/resume trials ---
identical=0
resumed_trials=0
# Trials whose first kill landed while `run` was still running (on a loaded machine the clean
# run's wall time can overshoot, and a kill after the end tests nothing).
landed=0
i=0
while read -r u1 u2; do
    i=$((i + 1))
    wd="$ROOT/trial-$i"
    d1="$(calc "$u1 * $WALL")"
    start_run "$wd" "$ROOT/trial-$i.log"
    sleep "$d1"
    kill -9 "$RUN_PID" 2>/dev/null || true
    st=0; { wait "$RUN_PID"; } 2>/dev/null || st=$?
    note="$(printf 'kill at %.2f s' "$d1")"
    if [ "$st" = 137 ]; then landed=$((landed + 1)); else note="$note (run had ended, status $st)"; fi
    if [ $((i % 5)) = 0 ]; then
        # The second kill lands within the time the first run had left.
        d2="$(calc "$u2 * ($WALL - $d1)")"
        start_run "$wd" "$ROOT/trial-$i.resume1.log"
        sleep "$d2"
        kill -9 "$RUN_PID" 2>/dev/null || true
        st=0; { wait "$RUN_PID"; } 2>/dev/null || st=$?
        note="$note$(printf ', again %.2f s into the resume' "$d2")"
        [ "$st" = 137 ] || note="$note (resume had ended, status $st)"
    fi
    if ! "$BIN" run "$MANIFEST" --workdir "$wd" >>"$ROOT/trial-$i.log" 2>&1; then
        echo "trial $i/$N: $note: the resume FAILED (log kept: $ROOT/trial-$i.log)"
        tail -n 5 "$ROOT/trial-$i.log" | sed 's/^/    /'
        failures=$((failures + 1)); keep_root=1
        continue
    fi
    resumed="$(resumed_count "$wd")"
    [ "$resumed" = 0 ] || resumed_trials=$((resumed_trials + 1))
    if same_as_reference "$wd" > "$ROOT/diff"; then
        if verify_clean "$wd"; then
            identical=$((identical + 1))
            echo "trial $i/$N: $note: identical ($resumed resumed from a checkpoint)"
            rm -rf "$wd"
        fi
    else
        echo "trial $i/$N: $note: DIFFERS (workdir kept: $wd)"
        cat "$ROOT/diff"
        failures=$((failures + 1)); keep_root=1
    fi
done < <(draws "$N")

# --- damaged store artifacts: verify finds them, run recomputes exactly that instance ---
# meta.json digest of every entry, to see which ones a run rewrote.
metas() { (cd "$1/store" && sha256sum ./*/meta.json | sort -k2); }
damage_artifact() {
    local how="$1" n="$2" wd="$ROOT/$1" file key inst out
    cp -a "$REF" "$wd"
    # The n-th non-empty artifact of the store, in path order.
    mapfile -t files < <(cd "$wd/store" && find . -path '*/out/*' -type f -size +0 | sort)
    file="${files[$((n % ${#files[@]}))]#./}"
    key="${file%%/*}"
    inst="$(meta_field "$wd/store/$key/meta.json" instance)"
    if [ "$how" = truncated ]; then
        truncate -s "$(( $(stat -c %s "$wd/store/$file") / 2 ))" "$wd/store/$file"
    else
        python3 -c 'import sys, random
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); r = random.Random(int(sys.argv[2]))
i = r.randrange(len(b)); b[i] ^= 1 << r.randrange(8); open(p, "wb").write(b)' "$wd/store/$file" "$SEED"
    fi
    echo "$how artifact: store/$file ($inst)"
    local before; before="$(metas "$wd")"
    local st=0
    out="$("$BIN" verify "$MANIFEST" --workdir "$wd" 2>&1)" || st=$?
    if [ "$st" != 1 ] || ! grep -qF "corrupt $inst " <<<"$out"; then
        fail "verify (status $st) did not report $inst:"; echo "$out" | sed 's/^/    /'
        return
    fi
    if ! out="$("$BIN" run "$MANIFEST" --workdir "$wd" 2>&1)"; then
        fail "the run after verify failed:"; echo "$out" | tail -n 5 | sed 's/^/    /'; return
    fi
    grep -q '^1 executed' <<<"$out" || fail "the run did not execute exactly one instance: $(tail -n 1 <<<"$out")"
    grep -qF "done   $inst (" <<<"$out" || fail "the run did not recompute $inst"
    changed="$( (diff <(echo "$before") <(metas "$wd") || true) | awk '/^>/ { print $3 }' | cut -d/ -f2 | sort -u)"
    [ "$changed" = "$key" ] || fail "meta.json changed for [$changed], expected only $key"
    if same_as_reference "$wd" > "$ROOT/diff"; then
        verify_clean "$wd" && echo "  found by verify, only $inst recomputed, store identical"
    else
        fail "store differs after the recompute"; cat "$ROOT/diff"
    fi
}
read -r a1 a2 < <(draws 1)
damage_artifact truncated "$(awk "BEGIN { print int($a1 * 1000000) }")"
damage_artifact bit-flipped "$(awk "BEGIN { print int($a2 * 1000000) }")"

# --- a damaged checkpoint: discarded with a warning, the stage restarts, same result ---
wd="$ROOT/checkpoint"
ckpt=""
# Kill as soon as a checkpoint exists; if the stage finished (and dropped it) first, resume and
# try again with the next stage.
for attempt in 1 2 3 4 5; do
    start_run "$wd" "$ROOT/checkpoint.log"
    while kill -0 "$RUN_PID" 2>/dev/null; do
        ckpt="$(find "$wd/checkpoints" -name state.bin -size +0 2>/dev/null | head -n 1 || true)"
        [ -z "$ckpt" ] || break
        sleep 0.02
    done
    kill -9 "$RUN_PID" 2>/dev/null || true
    { wait "$RUN_PID"; } 2>/dev/null || true
    ckpt="$(find "$wd/checkpoints" -name state.bin -size +0 2>/dev/null | head -n 1 || true)"
    [ -z "$ckpt" ] || break
done
if [ -z "$ckpt" ]; then
    fail "no checkpoint was written before the run ended"
else
    key="$(basename "$(dirname "$ckpt")")"
    python3 -c 'import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 0x10; open(p, "wb").write(b)' "$ckpt"
    echo "damaged checkpoint: checkpoints/$key/state.bin"
    if ! out="$("$BIN" run "$MANIFEST" --workdir "$wd" 2>&1)"; then
        fail "the run after the damaged checkpoint failed:"; echo "$out" | tail -n 5 | sed 's/^/    /'
    else
        grep -q "discarding checkpoint .*$key" <<<"$out" || fail "no 'discarding checkpoint' warning for $key"
        [ "$(meta_field "$wd/store/$key/meta.json" resumed)" = false ] || fail "$key claims it resumed"
        if same_as_reference "$wd" > "$ROOT/diff"; then
            verify_clean "$wd" && echo "  discarded with a warning, the stage restarted, store identical"
        else
            fail "store differs after the damaged checkpoint"; cat "$ROOT/diff"
        fi
    fi
fi

# --- two concurrent runs on one workdir: one refuses, nothing corrupt ---
wd="$ROOT/concurrent"
start_run "$wd" "$ROOT/concurrent-a.log"; pa=$RUN_PID
start_run "$wd" "$ROOT/concurrent-b.log"; pb=$RUN_PID
sa=0; wait "$pa" || sa=$?
sb=0; wait "$pb" || sb=$?
echo "concurrent runs: exit statuses $sa and $sb"
if [ "$sa" = 0 ] && [ "$sb" != 0 ]; then loser=b
elif [ "$sb" = 0 ] && [ "$sa" != 0 ]; then loser=a
else loser=""; fail "expected one run to succeed and one to refuse"; fi
if [ -n "$loser" ]; then
    if ! grep -q "is locked by pid" "$ROOT/concurrent-$loser.log"; then
        fail "the refused run did not name the lock:"; sed 's/^/    /' "$ROOT/concurrent-$loser.log"
    elif same_as_reference "$wd" > "$ROOT/diff"; then
        verify_clean "$wd" && echo "  one refused with the lock error, store sound and identical"
    else
        fail "store differs after the concurrent runs"; cat "$ROOT/diff"
    fi
fi

echo "crash-campaign: $identical/$N kill/resume trials identical ($landed killed while running, $resumed_trials resumed from a checkpoint); seed $SEED"
if [ "$failures" != 0 ]; then
    echo "crash-campaign: $failures FAILED check(s); files kept in $ROOT" >&2
    exit 1
fi
echo "crash-campaign: all checks passed"
