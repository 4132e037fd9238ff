#!/usr/bin/env bash
# eval.sh EXP: heldout WER (beam 5), fire count, joined pairs, the 7.5-min heldout long file at min silence 0.3 and 0.8
set -u
e=$1
. .venv/bin/activate
export OMP_NUM_THREADS=1
examples/synth/decode.sh --data data/synth --exp "$e" --beam 5 --subsets heldout > "$e/eval-decode.txt" 2>&1
python scripts/fire_count_calibration.py --path "$e/checkpoint_best.pt" --data data/synth --splits heldout --scales 1.0 > "$e/calibration.txt" 2>&1
python scripts/joined_utterances.py --path "$e/checkpoint_best.pt" --data data/synth --pairs 40 > "$e/joined.txt" 2>&1
for ms in 0.3 0.8; do
  python benchmarks/bench_long_audio.py --minutes 7.5 --manifest data/synth/heldout.tsv --ckpt "$e/checkpoint_best.pt" \
    --pad 0.03 0.25 --min-silence $ms --input-level off > "$e/long-ms$ms.txt" 2>&1
done
echo done > "$e/eval-done"
