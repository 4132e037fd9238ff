# conf/tiny.sh with tempo perturbation (fairseq_hkd/data/tempo.py): every training utterance is played
# U(0.9, 1.1) times as fast, so that the utterance's length says less about its token count.
# Batching counts each utterance as 1/0.9 of its frames, so batches get 10 % more frames to keep
# about the demo's utterances per update. Measured (CIF seed 1, 2,600 updates, 3,000-sentence corpus,
# results/fire-count-settings/tempo-0.9-1.1.txt): heldout WER 12.75 against the recipe's 13.64, fire-count
# accuracy 69.3 % against 72.0 % (it did not help the count), 60-min test file one by one / long 18.43 / 19.89
# (+1.46 against the recipe's +1.72; results/long60-tempo-cif-s1.txt). One seed: not in the demo.
#   examples/synth/train.sh --exp exp/synth/tempo --criterion cif --conf tiny_tempo
dropout=${dropout:-0.1}  # as measured (the recipe's dropout until 2026-12-05)
. "$HERE/conf/tiny.sh"
task_args+=(--tempo-min "${tempo_min:-0.9}" --tempo-max "${tempo_max:-1.1}")
optim_args+=(--max-tokens $(( ${max_tokens:-5000} * 11 / 10 )))  # the last --max-tokens wins
