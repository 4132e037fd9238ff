#!/usr/bin/env bash
# Average the last 10 epoch checkpoints, decode the dev and test subsets (beam 10) and score the WER.
#
# Usage:
#   examples/librispeech/decode.sh --plm /models/bert-base-uncased --exp exp/librispeech/hkd
#   examples/librispeech/decode.sh --plm /models/bert-base-uncased --exp exp/librispeech/hkd --subsets test-other
#
# Writes EXP/checkpoint_avgN.pt, EXP/decode-SUBSET-avgN/generate-SUBSET.txt and
# EXP/wer-summary-SUBSET-avgN.txt (word error rate, %), and prints one line per subset.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/librispeech
export PATH="$REPO/.venv/bin:$PATH"

data=$REPO/data/librispeech
exp=$REPO/exp/librispeech/hkd
avg=10
subsets="dev-clean dev-other test-clean test-other"
beam=10
plm=""  # the LOCAL bert-base-uncased folder (its tokenizer decodes the units)

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
[ -n "$plm" ] || { echo "$0: give --plm /path/to/bert-base-uncased" >&2; exit 2; }
. "$HERE/conf/task.sh"

ckpt=$exp/checkpoint_avg$avg.pt
[ -f "$ckpt" ] || fairseq-hkd-average-checkpoints --inputs "$exp" --num-epoch-checkpoints "$avg" --output "$ckpt"
for subset in $subsets; do
  out=$exp/decode-$subset-avg$avg
  fairseq-generate "${task_args[@]}" --path "$ckpt" --gen-subset "$subset" --load-teacher no \
    --beam "$beam" --max-tokens 30000 --scoring wer --results-path "$out" > "$out.log" 2>&1 \
    || { tail -n 20 "$out.log" >&2; echo "$0: fairseq-generate failed on $subset (log: $out.log)" >&2; exit 1; }
  wer=$(sed -n 's/.*: WER: \([0-9.]*\).*/\1/p' "$out/generate-$subset.txt" | tail -n 1)
  [ -n "$wer" ] || { echo "$0: no WER line in $out/generate-$subset.txt" >&2; exit 1; }
  echo "$wer" > "$exp/wer-summary-$subset-avg$avg.txt"
  echo "$exp $subset WER $wer (avg of $avg checkpoints, beam $beam)"
done
