. examples/synth/conf/tiny.sh
specaug_args+=(--noise-prob 0.3 --noise-snr-min 10 --noise-snr-max 30 --noise-dir /tmp/babble-train)
