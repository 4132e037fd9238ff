#!/usr/bin/env bash
# Train a small transformer language model on the training transcripts, in the ASR units, for
# shallow fusion, the paper's "+LM" column (authors: test CER 4.2 -> 4.1 for CIF + HKD). Run prepare.sh
# first. The model size and schedule are a starting point, not tuned: check the valid perplexity
# (LM/train.log) and the dev CER over a few --lm-weight values.
#
# Usage:
#   examples/aishell1/lm.sh                                # exp/aishell1/lm (GPU when there is one)
#   examples/aishell1/lm.sh --lm exp/aishell1/lm6 --layers 6 --stage 2
#   examples/aishell1/decode.sh --exp exp/aishell1/hkd --lm-path exp/aishell1/lm/checkpoint_best.pt --lm-weight 0.2
#
# Stages (each leaves LM/.stageN.done; delete it to redo a stage):
#   0  transcripts of DATA/{train,dev}.tsv -> unit symbols, one sentence a line (the task's tokenizer:
#      python -m fairseq_hkd.generation.lm_fusion, same options as train.sh)          LM/text/
#   1  fairseq-preprocess --only-source --srcdict DATA/dict.txt (token ids = ASR ids)  LM/data-bin/
#   2  fairseq-train --task language_modeling --arch transformer_lm                     LM/checkpoint_{best,last}.pt
# LM/dict.txt is a copy of the dictionary, so decoding can check the LM even if LM/data-bin moves.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/aishell1
export PATH="$REPO/.venv/bin:$PATH"
log() { echo "[aishell1/lm $(date +%H:%M:%S)] $*"; }

stage=0
stop_stage=2
data=$REPO/data/aishell1
lm=$REPO/exp/aishell1/lm
train_split=train
valid_split=dev
extra_text=""      # optional plain-text file (one sentence a line) added to the LM training text
layers=4
dim=512
max_update=30000
max_tokens=16384
dropout=0.2
lr=5e-4
warmup=2000
seed=1

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
. "$HERE/conf/task.sh"
corpus=aishell1  # log prefix of the shared stages
. "$REPO/examples/lm_stages.sh"
