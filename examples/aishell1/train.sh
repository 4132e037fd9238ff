#!/usr/bin/env bash
# Train the paper's CIF model on AISHELL-1 (run prepare.sh first).
#
# Usage:
#   examples/aishell1/train.sh --exp exp/aishell1/hkd                         # CIF + HKD, 2 GPUs
#   examples/aishell1/train.sh --exp exp/aishell1/cif --criterion cif          # CIF baseline
#   examples/aishell1/train.sh --exp exp/aishell1/acd --lrd-weight 0           # CIF + ACD
#
# Settings: conf/paper.sh (model, optimiser, schedule), conf/task.sh (units, CMVN). The last 10
# epoch checkpoints are kept for decode.sh to average.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/aishell1
export PATH="$REPO/.venv/bin:$PATH"
log() { echo "[aishell1/train $(date +%H:%M:%S)] $*"; }

data=$REPO/data/aishell1
exp=$REPO/exp/aishell1/hkd
criterion=cif_hkd  # cif | cif_hkd
acd_weight=1.0     # cif_hkd only
lrd_weight=0.01    # cif_hkd only
ngpu=2             # 30,000 frames per GPU; fewer GPUs accumulate (--update-freq) to the same batch
seed=1
conf=paper

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
. "$HERE/conf/task.sh"
if [ -f "$conf" ]; then . "$conf"; else . "$HERE/conf/$conf.sh"; fi  # a name in conf/ or a file

add_criterion_args "$criterion" "$acd_weight" "$lrd_weight"
run_args=(--seed "$seed" --save-dir "$exp" --keep-last-epochs 10 --train-subset train --valid-subset dev
          --distributed-world-size "$ngpu" --ddp-backend legacy_ddp --num-workers 4
          --log-format simple --log-interval 100)

mkdir -p "$exp"
log "training $criterion (acd $acd_weight, lrd $lrd_weight) on $ngpu GPU(s) -> $exp"
fairseq-train "${task_args[@]}" "${model_args[@]}" "${specaug_args[@]}" "${optim_args[@]}" \
  "${criterion_args[@]}" "${run_args[@]}" 2>&1 | tee -a "$exp/train.log"
