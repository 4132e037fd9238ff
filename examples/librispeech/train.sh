#!/usr/bin/env bash
# Train the paper's CIF model (LibriSpeech size) on LibriSpeech (run prepare.sh first).
#
# Usage:
#   examples/librispeech/train.sh --plm /models/bert-base-uncased --exp exp/librispeech/hkd        # CIF + HKD, 2 GPUs
#   examples/librispeech/train.sh --plm /models/bert-base-uncased --exp exp/librispeech/cif --criterion cif
#
# Settings: conf/paper.sh (model, optimiser, schedule), conf/task.sh (units, CMVN). The last 10
# epoch checkpoints are kept for decode.sh to average.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/librispeech
export PATH="$REPO/.venv/bin:$PATH"
log() { echo "[librispeech/train $(date +%H:%M:%S)] $*"; }

data=$REPO/data/librispeech
exp=$REPO/exp/librispeech/hkd
criterion=cif_hkd  # cif | cif_hkd
acd_weight=1.0     # cif_hkd only
lrd_weight=0.01    # cif_hkd only
ngpu=2             # 30,000 frames per GPU; fewer GPUs accumulate (--update-freq) to the same batch
seed=1
conf=paper
valid=dev-clean,dev-other
plm=""             # the LOCAL bert-base-uncased folder given to prepare.sh (its tokenizer defines the units)

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
[ -n "$plm" ] || { echo "$0: give --plm /path/to/bert-base-uncased" >&2; exit 2; }
. "$HERE/conf/task.sh"
if [ -f "$conf" ]; then . "$conf"; else . "$HERE/conf/$conf.sh"; fi  # a name in conf/ or a file

add_criterion_args "$criterion" "$acd_weight" "$lrd_weight"
run_args=(--seed "$seed" --save-dir "$exp" --keep-last-epochs 10 --train-subset train --valid-subset "$valid"
          --distributed-world-size "$ngpu" --ddp-backend legacy_ddp --num-workers 4
          --log-format simple --log-interval 100)

mkdir -p "$exp"
log "training $criterion (acd $acd_weight, lrd $lrd_weight) on $ngpu GPU(s) -> $exp"
fairseq-train "${task_args[@]}" "${model_args[@]}" "${specaug_args[@]}" "${optim_args[@]}" \
  "${criterion_args[@]}" "${run_args[@]}" 2>&1 | tee -a "$exp/train.log"
