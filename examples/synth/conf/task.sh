# Task options shared by train.sh and decode.sh (fairseq-generate needs the same ones as training).
# Sourced with $data and $plm set.
task_args=(
  "$data" --user-dir "$REPO/fairseq_hkd" --task cif_asr
  --unit wordpiece --tokenizer-dir "$plm"       # ASR units = the teacher's WordPiece tokens (1:1)
  --cmvn global --feature-store auto             # DATA/cmvn.npz, DATA/{split}.fbank.* from prepare.sh
  --max-unk-ratio 0.01                           # test units unseen in train become <unk> (and count as errors)
)
