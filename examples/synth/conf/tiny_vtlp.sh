# conf/tiny.sh with vocal tract length perturbation (fairseq_hkd/data/vtlp.py): every training utterance's frequency
# axis warped by a factor U(0.9, 1.1), formants moving by it. Measured (CIF, nine seeds, examples/synth/results/vtlp/):
# dev -0.75, heldout -0.27 WER points, fire count +1.3 on average, no interval excluding zero; not in the demo.
#   examples/synth/train.sh --data data/synth6k-wide-r2 --exp exp/vtlp/cif --criterion cif --conf tiny_vtlp
. "$HERE/conf/tiny.sh"
task_args+=(--vtlp-min "${vtlp_min:-0.9}" --vtlp-max "${vtlp_max:-1.1}")
