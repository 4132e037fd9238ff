#!/usr/bin/env bash
# The paper's ablation on the synthesized corpus: CIF, +ACD, +LRD, +HKD (ACD + LRD), several seeds
# each. Reports mean +- sd of the WER per system, per-seed paired differences to CIF, and a paired
# bootstrap over test utterances (95 % interval of the WER difference, seeds averaged). Longer than
# the demo; not run in CI.
#
# Usage:
#   examples/synth/ablation.sh                         # CIF, HKD seeds 1 2 3; ACD, LRD seeds 1 2
#   examples/synth/ablation.sh --max-update 2600 --max-tokens 2500 --exp exp/abl2600 --results examples/synth/results/abl2600
#   examples/synth/ablation.sh --main-seeds "1 2" --part-seeds "1" --parallel 1 --threads 1  # beside another job
#   examples/synth/ablation.sh --part-seeds ""          # CIF and HKD only
#   examples/synth/ablation.sh --only "hkd" --acd-weight 0.05 --results R2  # one system (a variant);
#       copy the CIF summaries into R2 first for the table's comparisons
#   examples/synth/ablation.sh --exp exp/abl4000 --results R3 --redecode yes  # decode the trained runs
#       again (after a decoding change) into a new RESULTS
#
# Runs prepare.sh if needed, then train.sh + decode.sh per (system, seed) into EXP/SYSTEM-sSEED.
# A run whose summary is already in RESULTS, or whose EXP/SYSTEM-sSEED has been decoded, is not run
# again, so an interrupted ablation resumes and committed results count. Each finished run's summary
# (summarize.sh) goes to RESULTS/SYSTEM-sSEED.txt at once, with the test references and hypotheses
# (the T-/D- lines of fairseq-generate's output) in RESULTS/SYSTEM-sSEED.generate-{test,heldout,dev}.txt for
# the bootstraps (heldout and dev since 2026-12-06). CIF seed 1 keeps every epoch's checkpoint; they are decoded on heldout for the learning
# curve RESULTS/curve-cif-s1.tsv. ACD and LRD weights: --acd-weight (0.05, the recipe's, chosen on
# heldout; results/abl-4000 was run with --acd-weight 0.2) and --lrd-weight (0.01); --acd-weight 1.0
# gives the paper's.
# The table goes to stdout and RESULTS/ablation-table.md.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/synth
export PATH="$REPO/.venv/bin:$PATH"
log() { echo "[synth/ablation $(date +%H:%M:%S)] $*"; }

data=$REPO/data/synth
exp=$REPO/exp/synth-ablation
results=""        # default: EXP/results
main_seeds="1 2 3"  # CIF and HKD
part_seeds="1 2"    # ACD and LRD alone
max_update=1300
max_tokens=5000
conf=tiny
beam=5
parallel=2        # runs side by side
threads=auto      # threads per run (auto: nproc / parallel)
curve=yes         # decode CIF seed 1's epoch checkpoints on heldout
redecode=no       # yes: runs trained before are decoded again (their summaries in RESULTS are still kept)
only="cif hkd acd lrd"  # the systems to run (the table shows every system with results for all its seeds)
unit=word         # ASR units (prepare.sh / train.sh / decode.sh --unit): word since 2026-12-05, wordpiece before
voices=wide       # training voices of the corpus (prepare.sh --voices): wide since 2026-12-05, narrow before
train_readings=2  # readings of each training sentence (prepare.sh --train-readings): 2 since 2026-12-06, as the demo; 1 before
acd_weight=0.05   # ACD weight of CIF + ACD and CIF + HKD (the recipe's, chosen on heldout: examples/synth/RESULTS.md)
lrd_weight=0.01   # LRD weight of CIF + LRD and CIF + HKD

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
[ -n "$results" ] || results=$exp/results
[ "$(echo $main_seeds | wc -w)" -ge 2 ] || { echo "$0: give at least 2 --main-seeds for a spread" >&2; exit 2; }
mkdir -p "$results"
commit=$(git -C "$REPO" rev-parse --short HEAD)

for sys in $only; do case $sys in cif|hkd|acd|lrd) ;; *) echo "$0: --only: unknown system $sys (cif hkd acd lrd)" >&2; exit 2 ;; esac; done
has_results() { local seed; for seed in $(seeds_of $1); do [ -f "$results/$1-s$seed.txt" ] || return 1; done; }
# system: criterion acd_weight lrd_weight
declare -A systems=([cif]="cif 0 0" [acd]="cif_hkd $acd_weight 0" [lrd]="cif_hkd 0 $lrd_weight"
                    [hkd]="cif_hkd $acd_weight $lrd_weight")
declare -A names=([cif]="CIF" [acd]="CIF + ACD" [lrd]="CIF + LRD" [hkd]="CIF + HKD")
seeds_of() { case $1 in cif|hkd) echo "$main_seeds" ;; *) echo "$part_seeds" ;; esac; }
# the order runs start in: seed-major, so that an interrupted ablation has whole seeds of every system
jobs_list=()
for seed in $(echo $main_seeds $part_seeds | tr ' ' '\n' | sort -un); do
  for sys in cif hkd acd lrd; do
    [[ " $only " == *" $sys "* ]] || continue
    [[ " $(seeds_of $sys) " == *" $seed "* ]] && jobs_list+=("$sys:$seed")
  done
done

"$HERE/prepare.sh" --data "$data" --unit "$unit" --voices "$voices" --train-readings "$train_readings"

# Runs go side by side, `--parallel` at a time, each on nproc / parallel threads (two 1-thread runs
# make more updates per second in total than one 2-thread run on 2 cores).
[ "$threads" != auto ] || threads=$(( $(nproc 2>/dev/null || echo 2) / parallel )); [ "$threads" -ge 1 ] || threads=1
run_one() {  # run_one SYSTEM SEED: train + decode into EXP/SYSTEM-sSEED unless done before; summary to RESULTS
  local sys=$1 seed=$2 dir=$exp/$1-s$2 criterion acd lrd epochs=no
  read -r criterion acd lrd <<< "${systems[$sys]}"
  if [ -f "$results/$sys-s$seed.txt" ] && [ -f "$results/$sys-s$seed.generate-test.txt" ]; then
    log "$sys seed $seed: result kept in $results, skipped"; return 0
  elif [ -f "$dir/wer-summary-test.txt" ] && [ -f "$dir/wer-summary-heldout.txt" ] && [ "$redecode" = yes ]; then
    log "$sys seed $seed: trained before, decoding again ($threads thread(s))"
    OMP_NUM_THREADS=$threads "$HERE/decode.sh" --data "$data" --unit "$unit" --exp "$dir" --beam "$beam" > /dev/null
  elif [ -f "$dir/wer-summary-test.txt" ] && [ -f "$dir/wer-summary-heldout.txt" ]; then
    log "$sys seed $seed: done before, skipped"
  else
    [ "$sys:$seed:$curve" = "cif:1:yes" ] && epochs=yes
    log "$sys seed $seed: training ($threads thread(s))"
    OMP_NUM_THREADS=$threads "$HERE/train.sh" --data "$data" --unit "$unit" --exp "$dir" --criterion "$criterion" \
      --acd-weight "$acd" --lrd-weight "$lrd" --seed "$seed" --max-update "$max_update" --max-tokens "$max_tokens" --conf "$conf" \
      --epoch-checkpoints "$epochs" | { grep --line-buffered -E "\| heldout \||done training" | sed -u "s/^/[$sys-s$seed] /" || true; }
    grep -q "done training" "$dir/train.log" || { echo "$0: training $sys seed $seed failed: $dir/train.log" >&2; return 1; }
    OMP_NUM_THREADS=$threads "$HERE/decode.sh" --data "$data" --unit "$unit" --exp "$dir" --beam "$beam"
  fi
  local at=$commit; [ "$redecode" != yes ] || at="$commit (decoded again; trained before, command below)"
  "$HERE/summarize.sh" --exp "$dir" --commit "$at" --out "$results/$sys-s$seed.txt" > /dev/null
  local split
  for split in test heldout dev; do  # test always; heldout and dev where decoded (runs decoded before dev existed)
    [ "$split" = test ] || [ -f "$dir/decode-$split/generate-$split.txt" ] || continue
    grep -E "^(T|D)-|WER: " "$dir/decode-$split/generate-$split.txt" > "$results/$sys-s$seed.generate-$split.txt"
  done
}
failed=0
for job in "${jobs_list[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n || failed=1; done
  run_one "${job%%:*}" "${job##*:}" &
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done
[ "$failed" = 0 ] || { echo "$0: a run failed (see EXP/*/train.log and decode-*.log)" >&2; exit 1; }

# Learning curve of CIF seed 1: heldout WER of every epoch checkpoint, with the validation's fire-count
# accuracy and teacher-forced token error of that epoch.
if [ "$curve" = yes ] && ls "$exp/cif-s1"/checkpoint[0-9]*.pt > /dev/null 2>&1; then
  curve_file=$results/curve-cif-s1.tsv
  echo -e "epoch\tupdates\theldout_wer\tfire_acc\ttf_ter" > "$curve_file.tmp"
  for ckpt in $(ls "$exp/cif-s1"/checkpoint[0-9]*.pt | sort -V); do
    epoch=$(basename "$ckpt" .pt); epoch=${epoch#checkpoint}
    OMP_NUM_THREADS=$(nproc) "$HERE/decode.sh" --data "$data" --unit "$unit" --exp "$exp/cif-s1" --checkpoint "$(basename "$ckpt")" \
      --subsets heldout --beam "$beam" --suffix "-epoch$epoch" > /dev/null
    line=$(grep -E "\| heldout \| epoch $(printf %03d "$epoch") \| valid on" "$exp/cif-s1/train.log" | tail -n 1)
    get() { echo "$line" | sed -n "s/.*| $1 \([^ |]*\).*/\1/p"; }
    echo -e "$epoch\t$(get num_updates)\t$(cat "$exp/cif-s1/wer-summary-heldout-epoch$epoch.txt")\t$(get fire_acc)\t$(get tf_ter)" >> "$curve_file.tmp"
  done
  # the run ends mid-epoch at --max-update: its last row is the final checkpoint run_one decoded
  line=$(grep -E "\| heldout \| .*valid on" "$exp/cif-s1/train.log" | tail -n 1)
  echo -e "end\t$(get num_updates)\t$(cat "$exp/cif-s1/wer-summary-heldout.txt")\t$(get fire_acc)\t$(get tf_ter)" >> "$curve_file.tmp"
  mv "$curve_file.tmp" "$curve_file"
  log "learning curve: $curve_file"; column -t "$curve_file"
fi

stats() {  # stats FILE...: "mean ± sd (min-max)" of the numbers in the files
  cat "$@" | awk 'NF {n++; x[n]=$1; s+=$1} END {if (!n) {printf "-"; exit} NR=n; m=s/NR; for(i=1;i<=NR;i++){v+=(x[i]-m)^2; if(i==1||x[i]<lo)lo=x[i]; if(i==1||x[i]>hi)hi=x[i]}
    printf "%.2f ± %.2f (%.2f-%.2f)", m, (NR>1 ? sqrt(v/(NR-1)) : 0), lo, hi}'
}
field() { sed -n "s/^$2: //p" "$1"; }  # field SUMMARY NAME
{
  echo "| system | criterion weights | test WER % (unseen voices) | heldout WER % | dev WER % (other unseen voices) | heldout fire-count acc. % | seeds |"
  echo "|---|---|---|---|---|---|---|"
  for sys in cif acd lrd hkd; do
    [ -n "$(seeds_of $sys)" ] && has_results $sys || continue  # --part-seeds "": CIF and HKD only; --only
    read -r criterion acd lrd <<< "${systems[$sys]}"
    tst=() held=() dev=() fire=()
    for seed in $(seeds_of $sys); do
      tst+=("$(field "$results/$sys-s$seed.txt" "WER test")"); held+=("$(field "$results/$sys-s$seed.txt" "WER heldout")")
      dev+=("$(field "$results/$sys-s$seed.txt" "WER dev")")
      fire+=("$(field "$results/$sys-s$seed.txt" "heldout fire_acc")"); done
    echo "| ${names[$sys]} | ACD $acd, LRD $lrd | $(printf '%s\n' "${tst[@]}" | stats /dev/stdin) | $(printf '%s\n' "${held[@]}" | stats /dev/stdin) | $(printf '%s\n' "${dev[@]}" | stats /dev/stdin) | $(printf '%s\n' "${fire[@]}" | stats /dev/stdin) | $(seeds_of $sys) |"
  done
  echo
  echo "mean ± sample standard deviation (min-max) over seeds; conf/$conf.sh, $max_update updates of <= $max_tokens frames, beam $beam, commit $commit."
  echo
  for split in test heldout dev; do
    echo "Paired comparisons with CIF on $split (seeds paired by number; bootstrap over the $split utterances):"
    echo
    for sys in acd lrd hkd; do
      [ -n "$(seeds_of $sys)" ] && has_results $sys && has_results cif || continue
      base=() syst=()
      for seed in $(seeds_of $sys); do
        base+=("$results/cif-s$seed.generate-$split.txt"); syst+=("$results/$sys-s$seed.generate-$split.txt"); done
      if ls "${base[@]}" "${syst[@]}" > /dev/null 2>&1; then
        echo "- $(python -m fairseq_hkd.generation.significance --baseline "${base[@]}" --system "${syst[@]}" \
          --names CIF "${names[$sys]}" 2> /dev/null)"
      else
        echo "- ${names[$sys]}: no $split hypotheses kept for every seed (runs summarised before 2026-12-06)"
      fi
    done
    echo
  done
} | tee "$results/ablation-table.md"
