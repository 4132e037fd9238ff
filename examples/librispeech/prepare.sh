#!/usr/bin/env bash
# LibriSpeech: manifests, bert-base-uncased WordPiece dictionary, fbank + CMVN, teacher states.
#
# Usage:
#   examples/librispeech/prepare.sh --corpus /data/LibriSpeech --plm /models/bert-base-uncased
#   examples/librispeech/prepare.sh --corpus ... --plm ... --train-subsets train-clean-100 --stage 1
#
# --corpus: the folder holding the extracted subsets (train-clean-100/, dev-clean/, ...);
# --plm: a LOCAL bert-base-uncased folder (config.json, vocab.txt, weights); nothing is downloaded.
# Stages (each leaves DATA/.stageN.done; delete it to redo a stage):
#   1  manifests per subset + train.tsv (the training subsets merged)   python -m fairseq_hkd.prepare.librispeech
#   2  dict.txt: the WordPiece units of train + every other PLM token    fairseq-hkd-build-dict --unit wordpiece
#   3  80-dim fbank store of every split + CMVN                          fairseq-hkd-feature-store, fairseq-hkd-cmvn
#   4  teacher states for train and the dev subsets (768-d, last layer)  fairseq-hkd-extract-teacher
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PATH="$REPO/.venv/bin:$PATH"
log() { echo "[librispeech/prepare $(date +%H:%M:%S)] $*"; }

stage=1
stop_stage=4
corpus=""
plm=""
data=$REPO/data/librispeech
train_subsets="train-clean-100 train-clean-360 train-other-500"
dev_subsets="dev-clean dev-other"
test_subsets="test-clean test-other"
nj=8

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
[ -n "$corpus" ] || { echo "$0: give --corpus /path/to/LibriSpeech" >&2; exit 2; }
[ -n "$plm" ] || { echo "$0: give --plm /path/to/bert-base-uncased (a local folder)" >&2; exit 2; }
mkdir -p "$data"

run_stage 1 "manifests" \
  python -m fairseq_hkd.prepare.librispeech --corpus "$corpus" --out "$data" --jobs "$nj" \
    --subsets $train_subsets $dev_subsets $test_subsets --merge "train=${train_subsets// /,}"
run_stage 2 "WordPiece dictionary" \
  fairseq-hkd-build-dict --manifest "$data/train.tsv" --unit wordpiece --plm-dir "$plm" --plm-vocab \
    --out "$data/dict.txt"
features() {
  fairseq-hkd-feature-store "$data" --splits train $dev_subsets $test_subsets --workers "$nj"
  fairseq-hkd-cmvn "$data" --split train
}
run_stage 3 "fbank feature store and global CMVN" features
teacher() {
  local split
  for split in train $dev_subsets; do
    fairseq-hkd-extract-teacher --manifest "$data/$split.tsv" --plm-dir "$plm" --unit wordpiece
  done
}
run_stage 4 "bert-base-uncased teacher states" teacher
log "data ready in $data"
