. examples/synth/conf/tiny.sh
criterion_args+=(--segment-count-weight 1.0 --segment-count-start 400)
