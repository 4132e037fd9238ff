# The demo recipe before 2026-12-02: cif_tiny at 40 ms frames, torch dropout (kept to compare against).
# 2 CPU cores (Adam 2e-3, 200-step warm-up, <= 5,000 padded frames per batch, light SpecAugment).
# Sourced by train.sh with $max_update set.
warmup=$(( max_update < 800 ? max_update / 4 : 200 ))
model_args=(
  --arch cif_tiny
)
specaug_args=(
  --spec-aug-freq-masks 2 --spec-aug-freq-width 10 --spec-aug-time-masks 2 --spec-aug-time-width 20
)
optim_args=(
  --optimizer adam --adam-betas "(0.9, 0.98)" --adam-eps 1e-8 --weight-decay 0.0 --clip-norm 5.0
  --lr 2e-3 --lr-scheduler tri_stage --init-lr-scale 0.01 --final-lr-scale 0.05
  --warmup-steps "$warmup" --hold-steps $(( max_update / 2 - warmup )) --decay-steps $(( max_update - max_update / 2 ))
  --max-update "$max_update" --max-tokens 5000 --required-batch-size-multiple 1
)
# CIF losses (CE with label smoothing 0.1 + 1.0 quantity + 0.5 CTC); cif_hkd adds ACD/LRD weights.
criterion_args=(
  --label-smoothing 0.1 --ce-weight 1.0 --quantity-weight 1.0 --ctc-weight 0.5
)
