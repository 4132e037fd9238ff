#!/usr/bin/env bash
# Choose the decoding settings on heldout, then report test at the chosen ones (never tuned on test).
#
# Usage:
#   examples/synth/tune_decode.sh --exp exp/synth/cif                       # no LM: tail threshold x slack
#   examples/synth/tune_decode.sh --exp exp/synth/hkd --lm-path exp/synth/lm/checkpoint_best.pt
#
# Grid on heldout (beam --beam): CIF tail threshold {0.4, 0.5} x --eos-slack {0, 1}, then, with
# --lm-path, LM weight {0.1, 0.2, 0.3, 0.5} at the best of those. The lowest heldout WER wins (ties:
# the earlier, simpler setting). Test is decoded with the winner and with the default (tail 0.5,
# slack 0, no LM). Writes EXP/decode-tuning.tsv (setting, heldout WER, test WER or -) and prints it.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/synth
log() { echo "[synth/tune_decode $(date +%H:%M:%S)] $*"; }

data=$REPO/data/synth
exp=$REPO/exp/synth/cif
beam=5
lm_path=""
tails="0.4 0.5"
slacks="0 1"
unit=word          # ASR units, as DATA was prepared (conf/task.sh)
lm_weights="0.1 0.2 0.3 0.5"

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name

table=$exp/decode-tuning.tsv
printf "setting\theldout_wer\ttest_wer\n" > "$table"
decode() {  # decode SUBSET TAIL SLACK [LM_WEIGHT] -> prints the WER
  local subset=$1 tail=$2 slack=$3 w=${4:-} args=(--data "$data" --exp "$exp" --unit "$unit" --beam "$beam" --subsets "$1"
    --tail-threshold "$2" --eos-slack "$3" --suffix "-beam$beam")
  [ -z "$w" ] || args+=(--lm-path "$lm_path" --lm-weight "$w")
  "$HERE/decode.sh" "${args[@]}" > /dev/null
  local name=-beam$beam${w:+-lm$w}-tail$tail; [ "$slack" = 0 ] || name=$name-slack$slack
  cat "$exp/wer-summary-$subset$name.txt"
}
best="" best_wer=""
consider() {  # consider SETTING WER: keep the lowest heldout WER (first wins ties)
  printf "%s\t%s\t-\n" "$1" "$2" >> "$table"
  if [ -z "$best_wer" ] || awk -v a="$2" -v b="$best_wer" 'BEGIN { exit !(a < b) }'; then best=$1 best_wer=$2; fi
}
for tail in $tails; do
  for slack in $slacks; do
    consider "tail=$tail slack=$slack" "$(decode heldout "$tail" "$slack")"
  done
done
log "best without LM on heldout: $best ($best_wer)"
if [ -n "$lm_path" ]; then
  read -r tail slack <<< "$(echo "$best" | sed 's/tail=\([^ ]*\) slack=\(.*\)/\1 \2/')"
  for w in $lm_weights; do consider "tail=$tail slack=$slack lm=$w" "$(decode heldout "$tail" "$slack" "$w")"; done
  log "best with LM on heldout: $best ($best_wer)"
fi
read -r tail slack w <<< "$(echo "$best" | sed 's/tail=\([^ ]*\) slack=\([^ ]*\)\( lm=\(.*\)\)\{0,1\}/\1 \2 \4/')"
printf "chosen on heldout: %s\t%s\t%s\n" "$best" "$best_wer" "$(decode test "$tail" "$slack" "${w:-}")" >> "$table"
printf "default (tail=0.5 slack=0)\t%s\t%s\n" "$(decode heldout 0.5 0)" "$(decode test 0.5 0)" >> "$table"
column -t -s $'\t' "$table"
