# conf/tiny.sh with edge-silence augmentation (fairseq_hkd/data/edge_silence.py): half of the training
# utterances get up to 200 ms of silence or quiet noise before and up to 500 ms after them, so that
# the model does not expect speech at frame 0 (voice-activity segments of long recordings start a
# few tens of ms early or late and end in a pause; BENCHMARKS.md, long recordings). Batching by
# --max-tokens counts the 70 frames an utterance can gain (since 2026-12-03), so a batch holds fewer
# utterances and an update costs about what it costs without the augmentation.
#   examples/synth/train.sh --exp exp/synth/edge --criterion cif_hkd --conf tiny_edge
dropout=${dropout:-0.1}  # as measured (the recipe's dropout until 2026-12-05)
. "$HERE/conf/tiny.sh"
specaug_args+=(
  --edge-silence-max-start-ms 200 --edge-silence-max-end-ms 500 --edge-silence-prob 0.5
)
