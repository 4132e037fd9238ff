#!/usr/bin/env bash
# AISHELL-1: manifests, character dictionary, fbank + CMVN, bert-base-chinese teacher states.
#
# Usage:
#   examples/aishell1/prepare.sh --corpus /data/aishell/data_aishell --plm /models/bert-base-chinese
#   examples/aishell1/prepare.sh --corpus ... --plm ... --data data/aishell1 --stage 3 --stop-stage 4
#
# --corpus: the extracted data_aishell folder (transcript/aishell_transcript_v0.8.txt, wav/);
# --plm: a LOCAL bert-base-chinese folder (config.json, vocab.txt, weights); nothing is downloaded.
# Stages (each leaves DATA/.stageN.done; delete it to redo a stage):
#   0  extract wav/SPEAKER.tar.gz into wav/{train,dev,test}/SPEAKER/ (skipped when wav/train exists)
#   1  manifests train/dev/test.tsv (transcript spaces removed)     python -m fairseq_hkd.prepare.aishell1
#   2  dict.txt of the training characters                           fairseq-hkd-build-dict --unit char
#   3  80-dim fbank store of every split (~10 GB float16) + CMVN     fairseq-hkd-feature-store, fairseq-hkd-cmvn
#   4  teacher states for train and dev (768-d, last layer)          fairseq-hkd-extract-teacher
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PATH="$REPO/.venv/bin:$PATH"
log() { echo "[aishell1/prepare $(date +%H:%M:%S)] $*"; }

stage=0
stop_stage=4
corpus=""
plm=""
data=$REPO/data/aishell1
nj=8

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
[ -n "$corpus" ] || { echo "$0: give --corpus /path/to/data_aishell" >&2; exit 2; }
mkdir -p "$data"

untar() {
  if [ -d "$corpus/wav/train" ]; then log "$corpus/wav/train exists"; return; fi
  local f n=0
  for f in "$corpus"/wav/*.tar.gz; do tar -xzf "$f" -C "$corpus/wav"; n=$((n + 1)); done
  log "extracted $n speaker archives"
}
run_stage 0 "extract the speaker archives" untar
run_stage 1 "manifests" python -m fairseq_hkd.prepare.aishell1 --corpus "$corpus" --out "$data" --jobs "$nj"
run_stage 2 "character dictionary" \
  fairseq-hkd-build-dict --manifest "$data/train.tsv" --unit char --out "$data/dict.txt"
features() {
  fairseq-hkd-feature-store "$data" --splits train dev test --workers "$nj"
  fairseq-hkd-cmvn "$data" --split train
}
run_stage 3 "fbank feature store and global CMVN" features
teacher() {
  [ -n "$plm" ] || { echo "$0: give --plm /path/to/bert-base-chinese (a local folder)" >&2; exit 2; }
  local split
  for split in train dev; do
    fairseq-hkd-extract-teacher --manifest "$data/$split.tsv" --plm-dir "$plm" --unit char
  done
}
run_stage 4 "bert-base-chinese teacher states" teacher
log "data ready in $data"
