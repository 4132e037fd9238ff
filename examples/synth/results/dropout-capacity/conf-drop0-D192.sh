. "$HERE/conf/tiny.sh"
model_args+=(--dropout 0.0 --cif-dropout 0.0 --decoder-dropout 0.0 --encoder-embed-dim 192 --encoder-ffn-embed-dim 768)
