# Task options shared by train.sh and decode.sh (fairseq-generate needs the same ones as training).
# Sourced with $data set.
task_args=(
  "$data" --user-dir "$REPO/fairseq_hkd" --task cif_asr
  --unit char                                    # Chinese characters = bert-base-chinese tokens (1:1)
  --cmvn utterance --feature-store auto          # the paper: utterance CMVN; DATA/{split}.fbank.* from prepare.sh
  --max-unk-ratio 0.01                           # dev/test characters unseen in train become <unk>
  --max-source-frames 3000
)
