. "$HERE/conf/tiny.sh"
model_args+=(--dropout 0.05 --cif-dropout 0.05 --decoder-dropout 0.05)
