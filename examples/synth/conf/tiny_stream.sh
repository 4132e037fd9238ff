# conf/tiny.sh trained for streaming (issue 17): causal depthwise convolutions and U2 dynamic chunk
# training (per batch: full context about half the time, else a chunk of 1..16 encoder frames of
# 80 ms, i.e. up to 1280 ms), all left context. One model then decodes offline (full context) and
# streams at any chunk size (fairseq-hkd-transcribe --streaming --chunk-ms 640).
#   examples/synth/train.sh --exp exp/synth/stream --criterion cif --conf tiny_stream
dropout=${dropout:-0.1}  # as measured (the recipe's dropout until 2026-12-05)
. "$HERE/conf/tiny.sh"
model_args+=(
  --encoder-causal-conv --dynamic-chunk-training --max-chunk-size 16 --encoder-left-chunks -1
)
