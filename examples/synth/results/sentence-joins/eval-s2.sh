#!/usr/bin/env bash
# eval-s2.sh EXP: heldout + test WER (beam 5), joined pairs, the 60-min test file at min silence 0.3 and 0.8
set -u
e=$1
. .venv/bin/activate
export OMP_NUM_THREADS=1
examples/synth/decode.sh --data data/synth --exp "$e" --beam 5 --subsets "heldout test" > "$e/eval-decode.txt" 2>&1
for ms in 0.3 0.8; do
  python benchmarks/bench_long_audio.py --minutes 60 --manifest data/synth/test.tsv --ckpt "$e/checkpoint_best.pt" \
    --input-level off --min-silence $ms > "$e/long60-ms$ms.txt" 2>&1
done
python scripts/joined_utterances.py --path "$e/checkpoint_best.pt" --data data/synth --pairs 40 > "$e/joined.txt" 2>&1
echo done > "$e/eval-done"
