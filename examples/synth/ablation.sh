#!/usr/bin/env bash
# The paper's ablation on the synthesized corpus: CIF, +ACD, +LRD, +HKD (ACD + LRD), several seeds
# each, reported as mean and spread of the test WER. Longer than the demo; not run in CI.
#
# Usage:
#   examples/synth/ablation.sh                                   # seeds 1 2, exp/synth-ablation
#   examples/synth/ablation.sh --seeds "1 2 3" --max-update 3000 --parallel 1
#
# Runs prepare.sh if needed, then train.sh + decode.sh per (system, seed) into EXP/SYSTEM-sSEED
# (finished runs are skipped, so an interrupted ablation resumes), then prints the table
# (mean, sample standard deviation, min-max over seeds) to stdout and EXP/ablation-table.md.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/synth
log() { echo "[synth/ablation $(date +%H:%M:%S)] $*"; }

data=$REPO/data/synth
exp=$REPO/exp/synth-ablation
seeds="1 2"
max_update=1300
train_minutes=0
beam=5
parallel=2        # runs side by side

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
[ "$(echo $seeds | wc -w)" -ge 2 ] || { echo "$0: give at least 2 seeds for a spread" >&2; exit 2; }

# system: criterion acd_weight lrd_weight
declare -A systems=([cif]="cif 0 0" [acd]="cif_hkd 1.0 0" [lrd]="cif_hkd 0 0.01" [hkd]="cif_hkd 1.0 0.01")
order="cif acd lrd hkd"

"$HERE/prepare.sh" --data "$data"

# Runs go side by side, `--parallel` at a time, each on nproc / parallel threads (two 1-thread runs make more
# updates per second in total than one 2-thread run on 2 cores).
threads=$(( $(nproc 2>/dev/null || echo 2) / parallel )); [ "$threads" -ge 1 ] || threads=1
run_one() {  # run_one SYSTEM SEED: train + decode into EXP/SYSTEM-sSEED unless done before
  local sys=$1 seed=$2 dir=$exp/$1-s$2 criterion acd lrd
  read -r criterion acd lrd <<< "${systems[$sys]}"
  if [ -f "$dir/wer-summary-test.txt" ] && [ -f "$dir/wer-summary-heldout.txt" ]; then
    log "$sys seed $seed: done before, skipped"; return 0; fi
  log "$sys seed $seed: training ($threads thread(s))"
  OMP_NUM_THREADS=$threads "$HERE/train.sh" --data "$data" --exp "$dir" --criterion "$criterion" \
    --acd-weight "$acd" --lrd-weight "$lrd" --seed "$seed" --max-update "$max_update" \
    --train-minutes "$train_minutes" | { grep --line-buffered -E "\| heldout \||done training" | sed -u "s/^/[$sys-s$seed] /" || true; }
  OMP_NUM_THREADS=$threads "$HERE/decode.sh" --data "$data" --exp "$dir" --beam "$beam"
}
failed=0
for sys in $order; do
  for seed in $seeds; do
    while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n || failed=1; done
    run_one "$sys" "$seed" &
  done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done
[ "$failed" = 0 ] || { echo "$0: a run failed (see EXP/*/train.log and decode-*.log)" >&2; exit 1; }

stats() {  # stats FILE...: "mean ± sd (min-max)" of the numbers in the files
  cat "$@" | awk '{x[NR]=$1; s+=$1} END {m=s/NR; for(i=1;i<=NR;i++){v+=(x[i]-m)^2; if(i==1||x[i]<lo)lo=x[i]; if(i==1||x[i]>hi)hi=x[i]}
    printf "%.1f ± %.1f (%.1f-%.1f)", m, (NR>1 ? sqrt(v/(NR-1)) : 0), lo, hi}'
}
{
  echo "| system | criterion weights | test WER % (unseen voices) | heldout WER % | seeds |"
  echo "|---|---|---|---|---|"
  declare -A names=([cif]="CIF" [acd]="CIF + ACD" [lrd]="CIF + LRD" [hkd]="CIF + HKD")
  for sys in $order; do
    read -r criterion acd lrd <<< "${systems[$sys]}"
    test_files=() heldout_files=()
    for seed in $seeds; do test_files+=("$exp/$sys-s$seed/wer-summary-test.txt"); heldout_files+=("$exp/$sys-s$seed/wer-summary-heldout.txt"); done
    echo "| ${names[$sys]} | ACD $acd, LRD $lrd | $(stats "${test_files[@]}") | $(stats "${heldout_files[@]}") | $seeds |"
  done
  echo
  echo "mean ± sample standard deviation (min-max) over seeds; cif_tiny, $max_update updates, beam $beam."
} | tee "$exp/ablation-table.md"
