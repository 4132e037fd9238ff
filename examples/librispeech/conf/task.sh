# Task options shared by train.sh and decode.sh (fairseq-generate needs the same ones as training).
# Sourced with $data and $plm set.
task_args=(
  "$data" --user-dir "$REPO/fairseq_hkd" --task cif_asr
  --unit wordpiece --tokenizer-dir "$plm"        # ASR units = bert-base-uncased WordPiece tokens (1:1)
  --cmvn utterance --feature-store auto          # utterance CMVN as for AISHELL-1; DATA/{split}.fbank.*
  --max-source-frames 3500                       # LibriSpeech utterances are <= 35 s
)
