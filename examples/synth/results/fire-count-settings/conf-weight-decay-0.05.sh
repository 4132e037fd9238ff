. examples/synth/conf/tiny.sh
optim_args+=(--weight-decay 0.05)
