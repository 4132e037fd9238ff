# Task options shared by train.sh and decode.sh (fairseq-generate needs the same ones as training).
# Sourced with $data and $plm set (and $unit: wordpiece when unset; word needs a DATA made with
# prepare.sh --unit word).
task_args=(
  "$data" --user-dir "$REPO/fairseq_hkd" --task cif_asr
  --unit "${unit:-wordpiece}" --tokenizer-dir "$plm"  # the teacher's WordPiece tokens (1:1), or word (pieces pooled)
  --cmvn global --feature-store auto             # DATA/cmvn.npz, DATA/{split}.fbank.* from prepare.sh
  --max-unk-ratio 0.01                           # test units unseen in train become <unk> (and count as errors)
)
