#!/usr/bin/env bash
# Train a small transformer language model on the training transcripts, in the ASR units, for
# shallow fusion, in the BERT WordPiece units. Run prepare.sh first. --extra-text adds a plain-text
# corpus (e.g. LibriSpeech's librispeech-lm-norm.txt, one sentence a line; tokenizing all of it
# takes hours on one core). The model size and schedule are a starting point, not tuned: check the
# valid perplexity (LM/train.log) and the dev WER over a few --lm-weight values.
#
# Usage:
#   examples/librispeech/lm.sh --plm /models/bert-base-uncased      # exp/librispeech/lm (GPU when there is one)
#   examples/librispeech/lm.sh --lm exp/librispeech/lm6 --plm /models/bert-base-uncased --extra-text /data/librispeech-lm-norm.txt
#   examples/librispeech/decode.sh --plm /models/bert-base-uncased --exp exp/librispeech/hkd \
#     --lm-path exp/librispeech/lm/checkpoint_best.pt --lm-weight 0.2
#
# Stages (each leaves LM/.stageN.done; delete it to redo a stage):
#   0  transcripts of DATA/{train,dev-clean}.tsv -> unit symbols, one sentence a line (the task's tokenizer:
#      python -m fairseq_hkd.generation.lm_fusion, same options as train.sh)          LM/text/
#   1  fairseq-preprocess --only-source --srcdict DATA/dict.txt (token ids = ASR ids)  LM/data-bin/
#   2  fairseq-train --task language_modeling --arch transformer_lm                     LM/checkpoint_{best,last}.pt
# LM/dict.txt is a copy of the dictionary, so decoding can check the LM even if LM/data-bin moves.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/examples/librispeech
export PATH="$REPO/.venv/bin:$PATH"
log() { echo "[librispeech/lm $(date +%H:%M:%S)] $*"; }

stage=0
stop_stage=2
data=$REPO/data/librispeech
lm=$REPO/exp/librispeech/lm
train_split=train
valid_split=dev-clean
extra_text=""      # optional plain-text file (one sentence a line) added to the LM training text
layers=6
dim=512
max_update=50000
max_tokens=16384
dropout=0.2
lr=5e-4
warmup=2000
seed=1
plm=""             # the LOCAL bert-base-uncased folder given to prepare.sh (its tokenizer defines the units)

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
[ -n "$plm" ] || { echo "$0: give --plm /path/to/bert-base-uncased" >&2; exit 2; }
. "$HERE/conf/task.sh"
corpus=librispeech  # log prefix of the shared stages
. "$REPO/examples/lm_stages.sh"
