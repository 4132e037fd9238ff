# The paper's optimisation, SpecAugment and loss weights exactly as for AISHELL-1
# (examples/aishell1/conf/paper.sh), with the larger LibriSpeech conformer
# (cif_conformer_librispeech: d=512, 16 layers, 8 heads, kernel 31, 4 decoder layers).
# Sourced by train.sh with $REPO and $ngpu set.
. "$REPO/examples/aishell1/conf/paper.sh"
model_args=(
  --arch cif_conformer_librispeech
  --encoder-input-scale sqrt_d  # as fairseq's S2T conformer, which the authors trained
)
