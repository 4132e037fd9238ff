# conf/tiny.sh with sentence joins (fairseq_hkd/data/sentence_joins.py): 30 % of the training batches have
# their rows joined in pairs, utterance + 0.1-0.6 s of silence or quiet noise + utterance, target
# "a </s> b </s>", so that the model transcribes segments holding two sentences (long recordings whose
# pauses are shorter than the transcriber's --min-silence); its decoding lets </s> mark a sentence
# boundary inside a segment (--cif-inner-eos auto). Batching reserves half of the longest pause per
# utterance, so batches get 10 % more frames (5,500 for the default 5,000: about the demo's utterances
# per update; at 5,000 heldout WER was 1.4 points worse). Chosen on heldout
# (examples/synth/results/sentence-joins/): two heldout sentences in one segment cost +3.5 WER points instead
# of +12.1, the 60-min test file split at 0.8 s pauses decodes at 23.9 instead of 27.3 WER, at +2.0 heldout /
# +2.9 test WER one by one (CIF, seed 1); files split between single utterances gain nothing.
#   examples/synth/train.sh --exp exp/synth/join --criterion cif --conf tiny_join
#   examples/synth/run.sh --conf tiny_join --exp exp/synth-join
dropout=${dropout:-0.1}  # as measured (the recipe's dropout until 2026-12-05)
. "$HERE/conf/tiny.sh"
task_args+=(--join-prob 0.3)
optim_args+=(--max-tokens $(( ${max_tokens:-5000} * 11 / 10 )))  # the last --max-tokens wins
