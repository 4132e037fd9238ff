# Task options shared by train.sh and decode.sh (fairseq-generate needs the same ones as training).
# Sourced with $data and $plm set (and $unit: word when unset; DATA must be prepared with the same
# --unit, which prepare.sh checks).
task_args=(
  "$data" --user-dir "$REPO/fairseq_hkd" --task cif_asr
  --unit "${unit:-word}" --tokenizer-dir "$plm"  # words (teacher: a word's WordPieces pooled), or wordpiece (1:1)
  --cmvn global --feature-store auto             # DATA/cmvn.npz, DATA/{split}.fbank.* from prepare.sh
  --max-unk-ratio 0.01                           # test units unseen in train become <unk> (and count as errors)
)
