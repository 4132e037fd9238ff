. examples/synth/conf/tiny.sh
criterion_args+=(--segment-count-weight 0.3 --segment-count-start 400)
