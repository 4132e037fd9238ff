dropout=${dropout:-0.1}  # measured with the recipe's dropout of the time
. "$HERE/conf/tiny.sh"
optim_args+=(--lr 4e-3)
