# conf/tiny.sh with vocal tract length perturbation (fairseq_hkd/data/vtlp.py): every training utterance's frequency
# axis warped by a factor U(0.9, 1.1), formants moving by it. Measured on the demo's corpus (examples/synth/results/vtlp/).
#   examples/synth/train.sh --data data/synth6k-wide-r2 --exp exp/vtlp/cif --criterion cif --conf tiny_vtlp
. "$HERE/conf/tiny.sh"
task_args+=(--vtlp-min "${vtlp_min:-0.9}" --vtlp-max "${vtlp_max:-1.1}")
