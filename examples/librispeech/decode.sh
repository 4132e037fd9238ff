#!/usr/bin/env bash
# Average the last 10 epoch checkpoints, decode the dev and test subsets (beam 10) and score the WER.
#
# Usage:
#   examples/librispeech/decode.sh --plm /models/bert-base-uncased --exp exp/librispeech/hkd
#   examples/librispeech/decode.sh --plm /models/bert-base-uncased --exp exp/librispeech/hkd --subsets test-other
#   examples/librispeech/decode.sh --plm /models/bert-base-uncased --exp exp/librispeech/hkd --lm-path exp/librispeech/lm/checkpoint_best.pt --lm-weight 0.2
#
# Writes EXP/checkpoint_avgN.pt, EXP/decode-SUBSET-avgN/generate-SUBSET.txt and
# EXP/wer-summary-SUBSET-avgN.txt (word error rate, %), and prints one line per subset.
# With --lm-path (shallow fusion with an LM from lm.sh, weight --lm-weight) the names get -lmW:
# EXP/decode-SUBSET-avgN-lmW/, EXP/wer-summary-SUBSET-avgN-lmW.txt.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/librispeech
export PATH="$REPO/.venv/bin:$PATH"

data=$REPO/data/librispeech
exp=$REPO/exp/librispeech/hkd
avg=10
subsets="dev-clean dev-other test-clean test-other"
beam=10
lm_path=""   # language model for shallow fusion (lm.sh); empty: none
lm_weight=0.2
plm=""  # the LOCAL bert-base-uncased folder (its tokenizer decodes the units)

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
[ -n "$plm" ] || { echo "$0: give --plm /path/to/bert-base-uncased" >&2; exit 2; }
. "$HERE/conf/task.sh"

ckpt=$exp/checkpoint_avg$avg.pt
[ -f "$ckpt" ] || fairseq-hkd-average-checkpoints --inputs "$exp" --num-epoch-checkpoints "$avg" --output "$ckpt"
lm_args=() tag=""
[ -z "$lm_path" ] || { lm_args=(--lm-path "$lm_path" --lm-weight "$lm_weight"); tag=-lm$lm_weight; }
for subset in $subsets; do
  out=$exp/decode-$subset-avg$avg$tag
  fairseq-generate "${task_args[@]}" --path "$ckpt" --gen-subset "$subset" --load-teacher no \
    --beam "$beam" --max-tokens 30000 --scoring wer --results-path "$out" "${lm_args[@]}" \
    > "$out.log" 2>&1 \
    || { tail -n 20 "$out.log" >&2; echo "$0: fairseq-generate failed on $subset (log: $out.log)" >&2; exit 1; }
  wer=$(sed -n 's/.*: WER: \([0-9.]*\).*/\1/p' "$out/generate-$subset.txt" | tail -n 1)
  [ -n "$wer" ] || { echo "$0: no WER line in $out/generate-$subset.txt" >&2; exit 1; }
  echo "$wer" > "$exp/wer-summary-$subset-avg$avg$tag.txt"
  echo "$exp $subset WER $wer (avg of $avg checkpoints, beam $beam${lm_path:+, LM weight $lm_weight})"
done
