. "$HERE/conf/tiny.sh"
optim_args+=(--lr 4e-3)
