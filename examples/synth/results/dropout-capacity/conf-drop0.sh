. "$HERE/conf/tiny.sh"
model_args+=(--dropout 0.0 --cif-dropout 0.0 --decoder-dropout 0.0)
