# The paper's AISHELL-1 setting (Han et al. 2023; authors' recipe): 47 M-parameter conformer CIF,
# Adam (0.9, 0.999) eps 1e-8, weight decay 0.01, clip 1.0, tri-stage LR peak 3e-4 (warm-up 30k
# updates from 0.01x, hold 90k, decay 120k to 0.01x), 240k updates, 30,000 frames per GPU x 2 GPUs,
# fp16, SpecAugment 2 x F=27, 2 x T=50. Sourced by train.sh with $ngpu set.
model_args=(
  --arch cif_conformer_paper
  --encoder-input-scale sqrt_d  # as fairseq's S2T conformer, which the authors trained
)
specaug_args=(
  --spec-aug-freq-masks 2 --spec-aug-freq-width 27 --spec-aug-time-masks 2 --spec-aug-time-width 50
  --spec-aug-prob 1.0
)
optim_args=(
  --optimizer adam --adam-betas "(0.9, 0.999)" --adam-eps 1e-8 --weight-decay 0.01 --clip-norm 1.0
  --lr 3e-4 --lr-scheduler tri_stage --init-lr-scale 0.01 --final-lr-scale 0.01
  --warmup-steps 30000 --hold-steps 90000 --decay-steps 120000 --max-update 240000
  --max-tokens 30000 --update-freq $(( 2 / ngpu > 0 ? 2 / ngpu : 1 )) --fp16
)
# L = CE (label smoothing 0.1) + 1.0 quantity + 0.5 CTC [+ 1.0 ACD + 0.01 LRD with cif_hkd]
criterion_args=(
  --label-smoothing 0.1 --ce-weight 1.0 --quantity-weight 1.0 --ctc-weight 0.5
)
