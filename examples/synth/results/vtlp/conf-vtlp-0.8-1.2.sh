# conf/tiny.sh with VTLP U(0.8, 1.2) (fairseq_hkd/data/vtlp.py)
. "$HERE/conf/tiny.sh"
task_args+=(--vtlp-min 0.8 --vtlp-max 1.2)
