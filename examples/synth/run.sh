#!/usr/bin/env bash
# The embedded demo: synthesize an English corpus, train cif_tiny with and without hierarchical
# knowledge distillation, decode both with fairseq-generate and print a WER table.
#
# Usage:
#   examples/synth/run.sh                                   # data/synth, exp/synth
#   examples/synth/run.sh --max-update 3000 --exp /tmp/exp --beam 1
#   examples/synth/run.sh --conf tiny_edge --exp exp/synth-edge    # another recipe from conf/
#   examples/synth/run.sh --max-tokens 4000                 # smaller batches (padded frames per batch)
#
# Updates: --max-update auto (default) trains 3,200 updates per model where bf16 autocast is on
# (AVX512-BF16 or AMX: ~14 min of training on 2 cores) and 1,600 elsewhere (float32 is 1.5-2x slower);
# 2,600 and 1,300 until 2026-12-05, when the recipe dropped dropout and training took 21 % less time per update.
#
# Steps: prepare.sh (corpus, dict, fbank + CMVN, teacher states) -> train.sh --criterion cif and
# train.sh --criterion cif_hkd side by side -> decode.sh on test (unseen voices), heldout (training voices,
# unseen sentences) and dev (heldout's sentences, other unseen voices). The table goes to stdout and EXP/wer-table.md.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/synth
log() { echo "[synth/run $(date +%H:%M:%S)] $*"; }

data=$REPO/data/synth
exp=$REPO/exp/synth
max_update=auto  # auto: 3,200 where bf16 autocast is on (a CPU with AVX512-BF16/AMX), else 1,600: <= 20 min on 2 cores
train_minutes=0
seed=1
beam=5
bf16=auto   # train.sh --bf16: auto | yes | no
conf=tiny       # train.sh --conf: conf/$conf.sh, the model and training recipe
max_tokens=5000 # train.sh --max-tokens: padded 10 ms frames per batch
unit=word       # ASR units (prepare.sh / train.sh / decode.sh --unit): word since 2026-12-05, wordpiece before
voices=wide     # training voices of the corpus (prepare.sh --voices): wide since 2026-12-05, narrow before
train_readings=2  # readings of each training sentence by other training voices (prepare.sh --train-readings): 2 since
                  # 2026-12-06, 1 before (results/train-readings: heldout and dev WER lower for CIF and HKD)
acd_weight=0.05 # HKD's ACD weight (train.sh's default, chosen on heldout; 0.2 before 2026-12-03, the paper's 1.0: examples/synth/RESULTS.md)

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name

start=$(date +%s)
"$HERE/prepare.sh" --data "$data" --unit "$unit" --voices "$voices" --train-readings "$train_readings"
if [ "$max_update" = auto ]; then  # as many updates as fit the demo's ~20 minutes on 2 cores
  max_update=1600
  if [ "$bf16" = yes ] || { [ "$bf16" = auto ] && "$REPO/.venv/bin/python" -c \
      "import sys; from fairseq_hkd.compat import cpu_has_native_bf16; sys.exit(not cpu_has_native_bf16())"; }; then
    max_update=3200
  fi
fi

# Train both systems at once, each on half of the cores (on 2 CPU cores two 1-thread runs make more
# updates per second in total than one 2-thread run), then decode both.
ncpu=$(nproc 2>/dev/null || echo 2)
threads=$(( ncpu >= 2 ? ncpu / 2 : 1 ))
train_one() {  # train_one MODEL CRITERION: train unless done before; progress lines prefixed by MODEL
  local model=$1 criterion=$2
  if [ -f "$exp/$model/checkpoint_best.pt" ] && grep -q "done training" "$exp/$model/train.log" 2>/dev/null; then
    log "$model: trained before ($exp/$model), skipped"; return 0; fi
  OMP_NUM_THREADS=$threads "$HERE/train.sh" --data "$data" --unit "$unit" --exp "$exp/$model" --criterion "$criterion" \
    --acd-weight "$acd_weight" --conf "$conf" --seed "$seed" --max-update "$max_update" --max-tokens "$max_tokens" --train-minutes "$train_minutes" --bf16 "$bf16" \
    | { grep --line-buffered -E "\| (train|heldout) \||train_inner|done training" | sed -u "s/^/[$model] /" || true; }
  grep -q "done training" "$exp/$model/train.log" || { echo "$0: training $model failed: $exp/$model/train.log" >&2; return 1; }
}
log "training cif and cif_hkd side by side ($threads thread(s) each, $max_update updates)"
wait_both() {  # wait_both STEP: wait for both background jobs; exit 1 if either failed (`wait a && wait b`
  # would not: under set -e a failure before the last && is ignored)
  local failed=0
  wait "$pid_cif" || failed=1
  wait "$pid_hkd" || failed=1
  [ "$failed" = 0 ] || { echo "$0: $1 failed (messages above)" >&2; exit 1; }
}
train_one cif cif & pid_cif=$!
train_one hkd cif_hkd & pid_hkd=$!
wait_both training
log "decoding test, heldout and dev with fairseq-generate (beam $beam)"
OMP_NUM_THREADS=$threads "$HERE/decode.sh" --data "$data" --unit "$unit" --exp "$exp/cif" --beam "$beam" & pid_cif=$!
OMP_NUM_THREADS=$threads "$HERE/decode.sh" --data "$data" --unit "$unit" --exp "$exp/hkd" --beam "$beam" & pid_hkd=$!
wait_both decoding

{
  echo "| model | test WER % (unseen voices) | heldout WER % (training voices, unseen sentences) | dev WER % (heldout's sentences, other unseen voices) |"
  echo "|---|---|---|---|"
  for model in cif hkd; do
    name=$([ $model = cif ] && echo "CIF" || echo "CIF + HKD (ACD $acd_weight, LRD 0.01)")
    echo "| $name | $(cat "$exp/$model/wer-summary-test.txt") | $(cat "$exp/$model/wer-summary-heldout.txt") | $(cat "$exp/$model/wer-summary-dev.txt") |"
  done
} | tee "$exp/wer-table.md"
log "done in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s; table: $exp/wer-table.md"
