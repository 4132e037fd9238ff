# The language-model stages shared by examples/{synth,aishell1,librispeech}/lm.sh (sourced, not run):
# 0 transcripts -> ASR unit text, 1 fairseq-preprocess with the ASR dictionary, 2 fairseq-train
# transformer_lm. Uses the sourcing script's $corpus, $data, $lm, $train_split, $valid_split,
# $extra_text, $layers, $dim, $max_tokens, $max_update, $dropout, $lr, $warmup, $seed, $stage,
# $stop_stage, $task_args, $REPO and log(); stage markers go to $lm/.stageN.done.
mkdir -p "$lm"

lm_stage() { stage_dir=$lm run_stage "$@"; }  # run_stage (examples/common.sh), markers in $lm

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
  grep -h "replaced by <unk>" "$lm/preprocess.log" | sed "s/^/[$corpus\/lm] /" || true
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
    --max-tokens "$max_tokens" --max-update "$max_update" --seed "$seed" \
    --save-dir "$lm" --no-epoch-checkpoints --num-workers 0 --log-format simple --log-interval 50 \
    "${device_args[@]}" > "$lm/train.log" 2>&1 \
    || { tail -n 20 "$lm/train.log" >&2; echo "$0: fairseq-train failed (log: $lm/train.log)" >&2; exit 1; }
  grep -E "\| valid \|" "$lm/train.log" | tail -n 1 | sed "s/^/[$corpus\/lm] /"
}
lm_stage 2 "fairseq-train transformer_lm ($layers x $dim, $max_update updates)" train_lm
log "done: $lm/checkpoint_best.pt (decode.sh --lm-path $lm/checkpoint_best.pt --lm-weight W)"
