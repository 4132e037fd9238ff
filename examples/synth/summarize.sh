#!/usr/bin/env bash
# One run's summary as a small text file (for examples/synth/results/): WER per split, the last
# heldout validation line's fire-count accuracy and teacher-forced token error, the fire count of the
# epoch checkpoint_best.pt (the decoded one) was saved at (the last validation whose loss was the best so far), updates, training
# wall time, commit, the training command (EXP/command.txt, train.sh writes it) and fairseq's settings.
#
# Usage:
#   examples/synth/summarize.sh --exp exp/synth/cif --out examples/synth/results/cif-s1.txt
#
# Reads EXP/train.log (fairseq-train's log, as train.sh writes it) and EXP/wer-summary-*.txt
# (decode.sh); prints the summary and writes it to --out when given.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

exp=$REPO/exp/synth/cif
out=""
commit=""   # the commit the run trained at (default: this checkout's)

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
log=$exp/train.log
[ -f "$log" ] || { echo "$0: no training log $log (run train.sh first)" >&2; exit 2; }
[ -n "$commit" ] || commit=$(git -C "$REPO" rev-parse --short HEAD)

field() {  # field NAME: the value of "NAME v" in the last heldout validation line
  grep -E "\| heldout \| .*valid on" "$log" | tail -n 1 | sed -n "s/.*| $1 \([^ |]*\).*/\1/p"
}
best_field() {  # best_field NAME: the value of "NAME v" in the validation line of checkpoint_best.pt's epoch
  grep -E "\| heldout \| .*valid on" "$log" | awk '{l = ""; b = ""; for (i = 1; i < NF; i++) {
      if ($i == "loss" && $(i - 1) == "|") l = $(i + 1); if ($i == "best_loss") b = $(i + 1) }
    if (l != "" && l == b) line = $0} END {print line}' | sed -n "s/.*| $1 \([^ |]*\).*/\1/p"
}
summary() {
  echo "run: $exp"
  echo "commit: $commit"
  for f in "$exp"/wer-summary-*.txt; do
    [ -f "$f" ] || continue
    name=$(basename "$f" .txt); echo "WER ${name#wer-summary-}: $(cat "$f")"
  done
  echo "heldout fire_acc: $(field fire_acc)"
  echo "heldout fire_acc of checkpoint_best: $(best_field fire_acc) (updates $(best_field num_updates))"
  echo "heldout tf_ter: $(field tf_ter)"
  echo "heldout acd_acc: $(field acd_acc)"
  echo "updates: $(field num_updates)"
  echo "train wall s: $(grep -E "\| train \| " "$log" | tail -n 1 | sed -n 's/.*| wall \([0-9]*\).*/\1/p')"
  local bf16; bf16=$(grep -m 1 -oE "under bf16 autocast: .*" "$log" | sed 's/under bf16 autocast: //' || true)
  [ -n "$bf16" ] || bf16=$(grep -m 1 -qE "'autocast_bf16': no" "$log" && echo "off (--autocast-bf16 no)" || echo "off (option absent)")
  echo "bf16 autocast: $bf16"
  [ -f "$exp/command.txt" ] && echo "command: $(sed "s|$REPO/||g" "$exp/command.txt")"
  # decoding settings of the test decode (fairseq-generate's config line; the count search is absent
  # from logs before 2026-12-03, which decoded the raw weights' count)
  [ -f "$exp/decode-test.log" ] && echo "decoding: $(grep -m 1 -E "fairseq_cli.generate( \| |:)\{" "$exp/decode-test.log" | grep -oE "'(beam|cif_count_search|cif_ctc_weight|cif_eos_slack)': [^,}]*" | awk '!seen[$0]++' | tr '\n' ' ')"
  echo "settings: $(grep -m 1 "fairseq_cli.train | {" "$log" | grep -oE "'(arch|max_update|seed|max_tokens|acd_weight|lrd_weight|dropout|dropout_impl|encoder_input_scale)': [^,}]*|'(criterion|model)': \{'_name': '[a-z0-9_]*'" | sed "s/: {'_name'//" | awk '!seen[$0]++' | tr '\n' ' ')"
}
if [ -n "$out" ]; then mkdir -p "$(dirname "$out")"; summary | tee "$out"; else summary; fi
