"""Sentence joins (data/sentence_joins.py): training rows holding two utterances and a pause.

Checked against fairseq's own collater on the concatenated targets (the decoder input) and against
the pieces put together by hand; the task draws joins for training updates only, records the join
probability in its checkpoint state, and decoding then lets </s> compete at inner steps.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fairseq.data import data_utils

from corpus import setup_task
from fairseq_hkd.data.sentence_joins import JoinConfig, join_batch

PAD, EOS = 1, 2


def _sample(src_lens, tgt_lens, F=5, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    srcs = [torch.randn(n, F, generator=g) for n in src_lens]
    tgts = [torch.cat([torch.randint(4, 20, (m - 1,), generator=g), torch.tensor([EOS])]) for m in tgt_lens]
    teachers = [torch.randn(m, D, generator=g) for m in tgt_lens]
    B, T, S = len(srcs), max(src_lens), max(tgt_lens)
    src = torch.zeros(B, T, F)
    teacher = torch.zeros(B, S, D)
    for b in range(B):
        src[b, : src_lens[b]] = srcs[b]
        teacher[b, : tgt_lens[b]] = teachers[b]
    sample = {
        "id": torch.tensor([10 + b for b in range(B)]), "utt_id": [f"u{b}" for b in range(B)],
        "net_input": {"src_tokens": src, "src_lengths": torch.tensor(src_lens),
                      "prev_output_tokens": data_utils.collate_tokens(tgts, PAD, EOS, move_eos_to_beginning=True)},
        "target": data_utils.collate_tokens(tgts, PAD, EOS), "target_lengths": torch.tensor(tgt_lens),
        "teacher_states": teacher, "ntokens": sum(tgt_lens), "nsentences": B,
    }
    return sample, srcs, tgts, teachers


def test_rows_are_joined_in_pairs_with_a_pause_from_the_bank():
    sample, srcs, tgts, teachers = _sample([9, 7, 6, 4, 3], [5, 4, 4, 2, 3])
    bank = np.random.default_rng(0).standard_normal((3, 20, 5)).astype(np.float32)
    cfg = JoinConfig(prob=1.0, min_gap=2, max_gap=6)
    out = join_batch(sample, bank, cfg, (1, 2, 3), EOS, PAD)
    assert out["nsentences"] == 3 and out["ntokens"] == sample["ntokens"]
    assert out["id"].tolist() == [10, 12, 14] and out["utt_id"] == ["u0+u1", "u2+u3", "u4"]
    groups = [[0, 1], [2, 3], [4]]
    joined_targets = [torch.cat([tgts[b] for b in g]) for g in groups]
    # fairseq's collater on the concatenated targets: the target and the decoder input (a </s> first)
    assert torch.equal(out["target"], data_utils.collate_tokens(joined_targets, PAD, EOS))
    assert torch.equal(out["net_input"]["prev_output_tokens"],
                       data_utils.collate_tokens(joined_targets, PAD, EOS, move_eos_to_beginning=True))
    assert out["target_lengths"].tolist() == [len(t) for t in joined_targets]
    x, lengths = out["net_input"]["src_tokens"], out["net_input"]["src_lengths"]
    for r, g in enumerate(groups):
        n = int(lengths[r])
        row = x[r]
        assert torch.equal(row[n:], torch.zeros_like(row[n:]))  # batch padding stays zero
        assert torch.equal(row[: len(srcs[g[0]])], srcs[g[0]])
        if len(g) == 1:
            assert n == len(srcs[g[0]])
            continue
        gap = n - len(srcs[g[0]]) - len(srcs[g[1]])
        assert cfg.min_gap <= gap <= cfg.max_gap
        assert torch.equal(row[n - len(srcs[g[1]]): n], srcs[g[1]])
        pause = row[len(srcs[g[0]]): len(srcs[g[0]]) + gap].numpy()
        # the pause is a contiguous stretch of one level of the bank
        assert any(np.array_equal(pause, bank[level, o: o + gap]) for level in range(3) for o in range(20 - gap + 1))
        want = torch.cat([teachers[b] for b in g])
        assert torch.equal(out["teacher_states"][r, : len(want)], want)
        assert torch.equal(out["teacher_states"][r, len(want):], torch.zeros_like(out["teacher_states"][r, len(want):]))
    # the caller's sample is left alone, and the draw is a function of the seed
    assert sample["nsentences"] == 5 and sample["net_input"]["src_tokens"].shape[0] == 5
    again = join_batch(sample, bank, cfg, (1, 2, 3), EOS, PAD)
    assert torch.equal(again["net_input"]["src_tokens"], x)


def test_probability_and_single_rows():
    sample, *_ = _sample([5, 4], [3, 2])
    bank = np.zeros((1, 10, 5), np.float32)
    assert join_batch(sample, bank, JoinConfig(0.0, 1, 2), (0,), EOS, PAD) is sample
    one, *_ = _sample([5], [3])
    assert join_batch(one, bank, JoinConfig(1.0, 1, 2), (0,), EOS, PAD) is one
    # prob 0.5: about half of the batches are joined
    joined = sum(join_batch(sample, bank, JoinConfig(0.5, 1, 2), (s,), EOS, PAD) is not sample for s in range(200))
    assert 70 < joined < 130
    with pytest.raises(ValueError, match="--join-min-gap-ms .* / --join-max-gap-ms"):
        JoinConfig(0.5, 5, 2).check(200)
    with pytest.raises(ValueError, match="--join-prob"):
        JoinConfig(1.5, 1, 2).check(200)


def test_task_joins_training_updates_and_records_it(tiny_corpus):
    with pytest.raises(ValueError, match="--cmvn global"):
        setup_task(tiny_corpus, "--join-prob", "0.5")
    with pytest.raises(ValueError, match="--join-min-gap-ms .* / --join-max-gap-ms"):
        setup_task(tiny_corpus, "--cmvn", "none", "--join-prob", "0.5", "--join-max-gap-ms", "3000")
    task = setup_task(tiny_corpus, "--cmvn", "none", "--spec-aug-prob", "0", "--join-prob", "1")
    task.load_dataset("train")
    task.load_dataset("valid")
    ds = task.dataset("train")
    assert ds.batch_extra_frames == 30 and task.dataset("valid").batch_extra_frames == 0  # half the longest pause
    s = ds.collater([ds[i] for i in range(4)])
    aug = task.augment(s, 5)
    assert aug["nsentences"] == 2 and aug["target_lengths"].tolist() == [
        int(s["target_lengths"][0] + s["target_lengths"][1]), int(s["target_lengths"][2] + s["target_lengths"][3])]
    assert (aug["target"][0] == task.target_dictionary.eos()).sum() == 2  # a </s> inside, one at the end
    # what the checkpoint records, and what decoding makes of it
    assert task.state_dict() == {}  # nothing trained yet
    task.trained_join_prob = 1.0
    assert task.state_dict() == {"trained_join_prob": 1.0}
    plain = setup_task(tiny_corpus, "--cmvn", "none")
    assert not plain.decoding_inner_eos()
    plain.load_state_dict({"trained_ctc_weight": 0.5, "trained_join_prob": 0.3})
    assert plain.decoding_inner_eos() and not plain.decoding_inner_eos("no")
    plain.load_state_dict({"trained_ctc_weight": 0.5, "trained_join_prob": 0.0})
    assert not plain.decoding_inner_eos() and plain.decoding_inner_eos("yes")


@pytest.mark.slow
def test_fairseq_train_with_joins_and_generate(tmp_path, venv_bin):
    """fairseq-train cif_hkd with every batch joined (teacher states joined too) runs, records the join
    probability in the checkpoint, and its generator lets </s> compete at inner steps."""
    from fairseq import checkpoint_utils

    import fairseq_hkd  # noqa: F401
    from train_runs import make_hkd_data, run, train_cmd

    data = make_hkd_data(tmp_path, n_train=8, n_valid=4)
    save = tmp_path / "ckpt"
    run(train_cmd(venv_bin, data, save, "--max-update", "4", "--batch-size", "4", "--join-prob", "1",
                  "--cmvn", "none"))
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert state["task_state"]["trained_join_prob"] == 1.0
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(save / "checkpoint_last.pt")])
    assert task.build_generator(models, SimpleNamespace(beam=2)).inner_eos
