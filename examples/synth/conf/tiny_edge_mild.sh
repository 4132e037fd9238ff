# conf/tiny_edge.sh, milder: 30 % of the training utterances get up to 100 ms of silence or quiet
# noise before and up to 300 ms after them (about what the transcriber's voice-activity segments add:
# silero's 30 ms speech pad plus its 32 ms windows at the start, the pause before the split at the end).
#   examples/synth/train.sh --exp exp/synth/edge_mild --criterion cif_hkd --conf tiny_edge_mild
dropout=${dropout:-0.1}  # as measured (the recipe's dropout until 2026-12-05)
. "$HERE/conf/tiny.sh"
specaug_args+=(
  --edge-silence-max-start-ms 100 --edge-silence-max-end-ms 300 --edge-silence-prob 0.3
)
