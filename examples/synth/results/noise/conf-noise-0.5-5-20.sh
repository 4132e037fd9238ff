. examples/synth/conf/tiny.sh
specaug_args+=(--noise-prob 0.5 --noise-snr-min 5 --noise-snr-max 20)
