#!/usr/bin/env bash
# Average the last 10 epoch checkpoints, decode dev and test (beam 10) and score the CER.
#
# Usage:
#   examples/aishell1/decode.sh --exp exp/aishell1/hkd
#   examples/aishell1/decode.sh --exp exp/aishell1/hkd --avg 5 --subsets test
#   examples/aishell1/decode.sh --exp exp/aishell1/hkd --lm-path exp/aishell1/lm/checkpoint_best.pt --lm-weight 0.2
#
# Writes EXP/checkpoint_avgN.pt, EXP/decode-SUBSET-avgN/generate-SUBSET.txt and
# EXP/wer-summary-SUBSET-avgN.txt (character error rate, %), and prints one line per subset.
# With --lm-path (shallow fusion with an LM from lm.sh, weight --lm-weight) the names get -lmW:
# EXP/decode-SUBSET-avgN-lmW/, EXP/wer-summary-SUBSET-avgN-lmW.txt.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/aishell1
export PATH="$REPO/.venv/bin:$PATH"

data=$REPO/data/aishell1
exp=$REPO/exp/aishell1/hkd
avg=10
subsets="dev test"
beam=10
lm_path=""   # language model for shallow fusion (lm.sh); empty: none
lm_weight=0.2

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
. "$HERE/conf/task.sh"

ckpt=$exp/checkpoint_avg$avg.pt
[ -f "$ckpt" ] || fairseq-hkd-average-checkpoints --inputs "$exp" --num-epoch-checkpoints "$avg" --output "$ckpt"
lm_args=() tag=""
[ -z "$lm_path" ] || { lm_args=(--lm-path "$lm_path" --lm-weight "$lm_weight"); tag=-lm$lm_weight; }
for subset in $subsets; do
  out=$exp/decode-$subset-avg$avg$tag
  fairseq-generate "${task_args[@]}" --path "$ckpt" --gen-subset "$subset" --load-teacher no \
    --beam "$beam" --max-tokens 30000 --scoring wer --wer-char-level --results-path "$out" "${lm_args[@]}" \
    > "$out.log" 2>&1 \
    || { tail -n 20 "$out.log" >&2; echo "$0: fairseq-generate failed on $subset (log: $out.log)" >&2; exit 1; }
  cer=$(sed -n 's/.*: WER: \([0-9.]*\).*/\1/p' "$out/generate-$subset.txt" | tail -n 1)
  [ -n "$cer" ] || { echo "$0: no WER line in $out/generate-$subset.txt" >&2; exit 1; }
  echo "$cer" > "$exp/wer-summary-$subset-avg$avg$tag.txt"
  echo "$exp $subset CER $cer (avg of $avg checkpoints, beam $beam${lm_path:+, LM weight $lm_weight})"
done
