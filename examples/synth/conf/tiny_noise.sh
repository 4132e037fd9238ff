# conf/tiny.sh with noise augmentation (fairseq_hkd/data/noise.py): 30 % of the training utterances are heard
# through white, pink or brown noise at 10-30 dB SNR, added to their log-mel frames in the power domain. For
# models meant for recordings with background noise: on dev at 20 dB SNR the CIF's WER falls from 67.7 to 26.9
# (white), 41.4 to 18.2 (pink) and 26.0 to 21.1 (babble, which training never hears); clean dev costs CIF 1.6
# points (seeds 1-3: +0.63, +1.62, +2.51), HKD 0.6 (seeds 1-3: -0.09, +0.72, +1.17; examples/synth/results/noise/). The augmentation costs ~4 % of a step. Not the demo's recipe (clean corpus).
#   examples/synth/train.sh --exp exp/synth/noise --criterion cif --conf tiny_noise
. "$HERE/conf/tiny.sh"
specaug_args+=(--noise-prob 0.3 --noise-snr-min 10 --noise-snr-max 30)
