#!/usr/bin/env bash
# Run on 2026-12-06 from the repository root (the exp/ paths are that machine's checkpoints): decode the 28 models
# of the demo's recipe (14 seeds x CIF/HKD) on dev-known-accents; copy the generate files next to their heldout/dev
# ones in examples/synth/results
set -u
cd /work/main
R=examples/synth/results
one() {  # EXP DEST_PREFIX
  OMP_NUM_THREADS=1 examples/synth/decode.sh --data data/synth6k-wide-r2 --exp $1 --beam 5 --subsets dev-known-accents \
    >> exp/vtlp/decode-known-accents.log 2>&1 \
  && cp $1/decode-dev-known-accents/generate-dev-known-accents.txt $2.generate-dev-known-accents.txt \
  && echo "$(date +%T) $1 done" >> exp/vtlp/progress || echo "$(date +%T) $1 FAILED" >> exp/vtlp/progress
}
for m in cif hkd; do
  one exp/demo-final/$m $R/demo-since-1e4f194/$m-s1
  for s in 2 3 4 5 6 7 8 9 10 11; do one exp/head/$m-s$s $R/demo-since-1e4f194/$m-s$s; done
  for s in 1 2 3; do one exp/r2/$m-s$s $R/train-readings/$m-s$s; done
done
echo "$(date +%T) known-accents all done" >> exp/vtlp/progress
