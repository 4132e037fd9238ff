#!/usr/bin/env bash
# Average the last 10 epoch checkpoints, decode dev and test (beam 10) and score the CER.
#
# Usage:
#   examples/aishell1/decode.sh --exp exp/aishell1/hkd
#   examples/aishell1/decode.sh --exp exp/aishell1/hkd --avg 5 --subsets test
#
# Writes EXP/checkpoint_avgN.pt, EXP/decode-SUBSET-avgN/generate-SUBSET.txt and
# EXP/wer-summary-SUBSET-avgN.txt (character error rate, %), and prints one line per subset.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/aishell1
export PATH="$REPO/.venv/bin:$PATH"

data=$REPO/data/aishell1
exp=$REPO/exp/aishell1/hkd
avg=10
subsets="dev test"
beam=10

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
. "$HERE/conf/task.sh"

ckpt=$exp/checkpoint_avg$avg.pt
[ -f "$ckpt" ] || fairseq-hkd-average-checkpoints --inputs "$exp" --num-epoch-checkpoints "$avg" --output "$ckpt"
for subset in $subsets; do
  out=$exp/decode-$subset-avg$avg
  fairseq-generate "${task_args[@]}" --path "$ckpt" --gen-subset "$subset" --load-teacher no \
    --beam "$beam" --max-tokens 30000 --scoring wer --wer-char-level --results-path "$out" > "$out.log" 2>&1 \
    || { tail -n 20 "$out.log" >&2; echo "$0: fairseq-generate failed on $subset (log: $out.log)" >&2; exit 1; }
  cer=$(sed -n 's/.*: WER: \([0-9.]*\).*/\1/p' "$out/generate-$subset.txt" | tail -n 1)
  [ -n "$cer" ] || { echo "$0: no WER line in $out/generate-$subset.txt" >&2; exit 1; }
  echo "$cer" > "$exp/wer-summary-$subset-avg$avg.txt"
  echo "$exp $subset CER $cer (avg of $avg checkpoints, beam $beam)"
done
