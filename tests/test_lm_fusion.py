"""LM shallow fusion in the CIF search (fairseq_hkd.generation.lm_fusion + cif_generator).

The scoring rule under test (lm_fusion.py's docstring): every chosen token, </s> included, scores
log p_ASR + W log p_LM(token | </s> prefix); a hypothesis still open after its last CIF step gets
</s> appended and pays W log p_LM(</s> | </s> hypothesis); an utterance with no CIF tokens scores
W log p_LM(</s> | </s>). References recompute every prefix from scratch in float64.
"""
import itertools
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.models import FairseqIncrementalDecoder, FairseqLanguageModel

from fairseq_hkd.generation.cif_generator import CifGenerator
from fairseq_hkd.generation.lm_fusion import LmDictionaryError, check_lm_dictionary, load_lm
from test_generator import MockModel, build_real_model, make_batch, make_dict, real_cif_outputs, step_lprobs

REPO = Path(__file__).resolve().parents[1]
USER_DIR = str(REPO / "fairseq_hkd")


# ---------------------------------------------------------------------------------------------- mock LM
class MockLMDecoder(FairseqIncrementalDecoder):
    """logits_t = tanh(sum_{j<=t} E[x_j]) U + bias (float64): depends on every earlier token."""

    def __init__(self, dictionary, dim, seed):
        super().__init__(dictionary)
        g = torch.Generator().manual_seed(seed)
        V = len(dictionary)
        self.embed_tokens = torch.nn.Embedding(V, dim).double()
        with torch.no_grad():
            self.embed_tokens.weight.copy_(torch.randn(V, dim, generator=g, dtype=torch.float64))
        self.embed_tokens.weight.requires_grad_(False)
        self.u = torch.nn.Parameter(3 * torch.randn(dim, V, generator=g, dtype=torch.float64), requires_grad=False)
        self.bias = torch.nn.Parameter(torch.zeros(V, dtype=torch.float64), requires_grad=False)
        self.calls = 0

    def forward(self, prev_output_tokens, incremental_state=None, **kwargs):
        self.calls += 1
        emb = self.embed_tokens(prev_output_tokens)
        if incremental_state is not None:
            state = self.get_incremental_state(incremental_state, "sum")
            s = emb[:, -1] if state is None else state["s"] + emb[:, -1]
            self.set_incremental_state(incremental_state, "sum", {"s": s})
            s = s[:, None]
        else:
            s = emb.cumsum(1)
        return torch.tanh(s) @ self.u + self.bias, None

    def reorder_incremental_state(self, incremental_state, new_order):
        state = self.get_incremental_state(incremental_state, "sum")
        if state is not None:
            state["s"] = state["s"].index_select(0, new_order)
            self.set_incremental_state(incremental_state, "sum", state)


class MockLM(FairseqLanguageModel):
    def __init__(self, dictionary, dim=5, seed=100):
        super().__init__(MockLMDecoder(dictionary, dim, seed))


def lm_lprobs(lm, prefix):
    """float64 LM log-probs of the next token after ``prefix`` (starting with </s>), from scratch."""
    logits, _ = lm.decoder(torch.tensor([prefix]))
    return torch.log_softmax(logits[0, -1].double(), -1)


def fused_hypotheses(model, lm, W, c, L, eos_slack=0):
    """Every hypothesis under the documented rules with its fused float64 score (brute force)."""
    d = model.decoder.dictionary
    eos = d.eos()
    if L == 0:
        return [((eos,), W * float(lm_lprobs(lm, [eos])[eos]))]
    allowed = [i for i in range(len(d)) if i not in (d.bos(), d.pad())]
    out = {}
    for m in range(1, L + 1):
        for seq in itertools.product(allowed, repeat=m):
            if eos in seq[:-1]:
                continue
            if seq[-1] == eos and m - 1 < L - 1 - eos_slack:  # </s> chosen too early
                continue
            if seq[-1] != eos and m < L:  # open hypotheses run all L steps
                continue
            prefix, score = [eos], 0.0
            for tok in seq:
                score += float(step_lprobs(model, c, prefix)[tok]) + W * float(lm_lprobs(lm, prefix)[tok])
                prefix.append(tok)
            if seq[-1] != eos:  # appended </s>: the LM's sentence end, no ASR term
                score += W * float(lm_lprobs(lm, prefix)[eos])
                prefix.append(eos)
            out[tuple(prefix[1:])] = score
    return sorted(out.items(), key=lambda kv: -kv[1])


def run(model, d, x, lengths, beam, nbest=1, eos_slack=0, lm=None, W=0.0):
    gen = CifGenerator([model], d, beam_size=beam, nbest=nbest, eos_slack=eos_slack, lm_model=lm, lm_weight=W)
    return gen.generate([model], {"net_input": {"src_tokens": x, "src_lengths": lengths}})


def as_lists(hypos):
    return [[(h["tokens"].tolist(), h["score"], h["positional_scores"].tolist()) for h in utt] for utt in hypos]


# ---------------------------------------------------------------------------------------------- (a) W = 0
@pytest.mark.parametrize("beam,eos_slack", [(1, 0), (4, 0), (4, 1)])
def test_weight_zero_equals_plain_search(beam, eos_slack):
    d = make_dict(9)
    model, lm = MockModel(d, seed=3), MockLM(d, seed=4)
    x, lengths = make_batch([5, 0, 3, 7, 1], seed=3)
    plain = run(model, d, x, lengths, beam, nbest=beam, eos_slack=eos_slack)
    fused = run(model, d, x, lengths, beam, nbest=beam, eos_slack=eos_slack, lm=lm, W=0.0)
    assert as_lists(fused) == as_lists(plain)  # exactly: the LM is not even called
    assert lm.decoder.calls == 0


def test_weight_changes_result():
    """Not vacuous: with this LM and W the search result differs from the plain one."""
    d = make_dict(9)
    model, lm = MockModel(d, seed=3), MockLM(d, seed=4)
    x, lengths = make_batch([5, 3, 7], seed=3)
    plain = run(model, d, x, lengths, 4)
    fused = run(model, d, x, lengths, 4, lm=lm, W=1.5)
    assert [u[0]["tokens"].tolist() for u in plain] != [u[0]["tokens"].tolist() for u in fused]


# ---------------------------------------------------------------------------------------------- (b) brute force
@pytest.mark.parametrize("seed,eos_slack,W", [(0, 0, 0.7), (3, 0, 2.0), (0, 1, 0.7), (5, 1, 1.3)])
def test_exhaustive_beam_equals_brute_force(seed, eos_slack, W):
    d = make_dict(3)  # allowed tokens: </s>, <unk>, a, b, c
    model, lm = MockModel(d, seed=seed), MockLM(d, seed=seed + 50)
    with torch.no_grad():
        model.decoder.bias[d.eos()] = 1.0
        lm.decoder.bias[d.eos()] = 0.5
    x, lengths = make_batch([3, 1, 2, 0], seed=seed)
    nbest = 5
    hypos = run(model, d, x, lengths, beam=5**3, nbest=nbest, eos_slack=eos_slack, lm=lm, W=W)
    for b in range(len(lengths)):
        ref = fused_hypotheses(model, lm, W, x[b], int(lengths[b]), eos_slack)[:nbest]
        got = [(tuple(h["tokens"].tolist()), h["score"]) for h in hypos[b]]
        assert [t for t, _ in got] == [t for t, _ in ref]
        for (_, s), (_, rs) in zip(got, ref):
            assert s == pytest.approx(rs, abs=1e-4)
        for h in hypos[b]:
            assert h["score"] == pytest.approx(float(h["positional_scores"].sum()), abs=1e-4)


def test_greedy_positional_scores_follow_the_rule():
    """Beam 1 against a reference loop, position by position (appended </s>: W log p_LM(</s>))."""
    d = make_dict(8)
    model, lm = MockModel(d, seed=2), MockLM(d, seed=9)
    W = 0.8
    x, lengths = make_batch([6, 0, 3, 1], seed=2)
    hypos = run(model, d, x, lengths, beam=1, lm=lm, W=W)
    eos = d.eos()
    for b in range(len(lengths)):
        L, c = int(lengths[b]), x[b]
        prefix, pos = [eos], []
        for i in range(L):
            lp = step_lprobs(model, c, prefix) + W * lm_lprobs(lm, prefix)
            if i < L - 1:
                lp[eos] = -math.inf
            tok = int(lp.argmax())
            prefix.append(tok)
            pos.append(float(lp[tok]))
            if tok == eos:
                break
        if prefix[-1] != eos or L == 0:
            pos.append(W * float(lm_lprobs(lm, prefix)[eos]))
            prefix.append(eos)
        (h,) = hypos[b]
        assert h["tokens"].tolist() == prefix[1:]
        torch.testing.assert_close(h["positional_scores"].double(), torch.tensor(pos, dtype=torch.float64),
                                   atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- (c) batching
def test_batch_equals_one_by_one():
    d = make_dict(10)
    model, lm = MockModel(d, seed=5), MockLM(d, seed=6)
    x, lengths = make_batch([6, 2, 0, 9, 4, 4], seed=5)
    batch = run(model, d, x, lengths, beam=4, nbest=3, lm=lm, W=0.9)
    for b in range(len(lengths)):
        L = int(lengths[b])
        alone = run(model, d, x[b : b + 1, : max(L, 1)], lengths[b : b + 1], beam=4, nbest=3, lm=lm, W=0.9)[0]
        assert [h["tokens"].tolist() for h in batch[b]] == [h["tokens"].tolist() for h in alone]
        assert [h["score"] for h in batch[b]] == pytest.approx([h["score"] for h in alone], abs=1e-5)


def test_nar_decoder_ignores_the_lm():
    d = make_dict(5)
    model, lm = MockModel(d, seed=6, autoregressive=False), MockLM(d)
    x, lengths = make_batch([6, 3], seed=6)
    assert as_lists(run(model, d, x, lengths, 3, lm=lm, W=1.0)) == as_lists(run(model, d, x, lengths, 3))


def test_negative_weight_rejected():
    d = make_dict(3)
    with pytest.raises(ValueError, match="lm-weight"):
        CifGenerator([MockModel(d)], d, lm_model=MockLM(d), lm_weight=-0.5)


def test_lm_training_samples_start_with_eos():
    """fairseq-train --task language_modeling --sample-break-mode eos (lm.sh) trains p(w_i | </s> w_<i),
    the context the search gives the LM; it needs compat's numpy.compat shim under numpy 2."""
    import fairseq_hkd  # noqa: F401  (compat shims)
    from fairseq.data import TokenBlockDataset

    ds = [torch.tensor([5, 6, 2]), torch.tensor([7, 2])]
    blocks = TokenBlockDataset(ds, [3, 2], block_size=None, pad=1, eos=2, break_mode="eos", include_targets=True)
    source, target, _ = blocks[0]
    assert source.tolist() == [2, 5, 6] and target.tolist() == [5, 6, 2]


# ---------------------------------------------------------------------------------------------- real models
def _save_checkpoint(cfg, model, path):
    from omegaconf import OmegaConf

    torch.save({"args": None, "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
                "model": model.state_dict(), "optimizer_history": [{"criterion_name": "cross_entropy",
                "optimizer_name": "adam", "lr_scheduler_state": {}, "num_updates": 0}], "extra_state": {}}, path)


def make_lm_checkpoint(lm_data: Path, path: Path, seed=0, sharpen=8.0):
    """A tiny fairseq transformer_lm (random weights, sharpened output layer so it has opinions)
    trained (nominally) on LM_DATA/dict.txt, saved as fairseq-train saves checkpoints."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(lm_data), "--task", "language_modeling", "--arch", "transformer_lm", "--decoder-layers", "1",
        "--decoder-embed-dim", "16", "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "2",
        "--sample-break-mode", "eos", "--tokens-per-sample", "128", "--optimizer", "adam", "--lr", "1e-3",
        "--seed", str(seed),
    ])
    cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(seed)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    with torch.no_grad():
        for p in model.decoder.output_projection.parameters():
            p.mul_(sharpen)
    _save_checkpoint(cfg, model, path)
    return model.eval()


def test_real_decoder_and_transformer_lm(tmp_path):
    """fairseq's attention caches on both sides: batch == one by one (beam reorders, utterances
    leaving the batch), and greedy == a loop that recomputes both models on the whole prefix."""
    model, d = build_real_model(seed=3)
    (tmp_path / "lm").mkdir()
    d.save(str(tmp_path / "lm" / "dict.txt"))
    lm = make_lm_checkpoint(tmp_path / "lm", tmp_path / "lm.pt", seed=1)
    emb, n = real_cif_outputs(model, [300, 90, 220, 160], seed=3)
    assert len(set(n.tolist())) > 1
    W = 0.6
    gen = CifGenerator([model], d, beam_size=5, nbest=3, lm_model=lm, lm_weight=W)
    with torch.no_grad():
        batch = gen.beam_search(emb, n)
        for b in range(len(n)):
            alone = gen.beam_search(emb[b : b + 1, : int(n[b])], n[b : b + 1])
            w = alone.tokens.size(2)
            assert batch.tokens[b, :, :w].tolist() == alone.tokens[0].tolist()
            torch.testing.assert_close(batch.scores[b], alone.scores[0], atol=1e-4, rtol=0)
        greedy = CifGenerator([model], d, beam_size=1, lm_model=lm, lm_weight=W).beam_search(emb, n)
        eos = d.eos()
        for b in range(len(n)):
            L, prefix, score = int(n[b]), [eos], 0.0
            for i in range(L):
                logits, _ = model.decoder(torch.tensor([prefix]), emb[b : b + 1, : i + 1], None)
                lp = torch.log_softmax(logits[0, -1].double(), -1)
                lp[d.bos()] = lp[d.pad()] = -math.inf
                lp = lp + W * torch.log_softmax(lm(torch.tensor([prefix]))[0][0, -1].double(), -1)
                if i < L - 1:
                    lp[eos] = -math.inf
                prefix.append(int(lp.argmax()))
                score += float(lp[prefix[-1]])
                if prefix[-1] == eos:
                    break
            if prefix[-1] != eos:
                score += W * float(torch.log_softmax(lm(torch.tensor([prefix]))[0][0, -1].double(), -1)[eos])
                prefix.append(eos)
            assert greedy.tokens[b, 0, : int(greedy.lengths[b, 0])].tolist() == prefix[1:]
            assert float(greedy.scores[b, 0]) == pytest.approx(score, abs=1e-3)


# ---------------------------------------------------------------------------------------------- (d), (e) files
@pytest.fixture(scope="module")
def lm_setup(tmp_path_factory):
    """Tiny corpus + an untrained cif_tiny checkpoint that fires every ~3 frames + LM checkpoints:
    good (trained on DATA/dict.txt), other_size (a dictionary with one more symbol) and
    same_size (two symbols swapped)."""
    from corpus import make_tiny_corpus, setup_task

    root = tmp_path_factory.mktemp("lm_fusion")
    data = make_tiny_corpus(root / "data", n_train=3, n_valid=2)
    shutil.copy(data / "train.tsv", data / "test.tsv")
    task = setup_task(data, "--load-teacher", "no")
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data), "--task", "cif_asr", "--arch", "cif_tiny", "--criterion", "cif", "--load-teacher", "no"])
    cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(0)
    asr = task.build_model(cfg.model)
    with torch.no_grad():
        asr.cif.proj.weight.zero_()
        asr.cif.proj.bias.fill_(-0.6)  # alpha = 0.35 everywhere: a token every ~3 encoder frames
    _save_checkpoint(cfg, asr, root / "asr.pt")

    d = Dictionary.load(str(data / "dict.txt"))
    lms = {}
    for name in ("good", "other_size", "same_size"):
        lm_data = root / f"lm_{name}"
        lm_data.mkdir()
        symbols = d.symbols[d.nspecial:]
        if name == "other_size":
            symbols = symbols + ["zz"]
        elif name == "same_size":
            symbols = [symbols[1], symbols[0]] + symbols[2:]
        (lm_data / "dict.txt").write_text("".join(f"{s} 1\n" for s in symbols), encoding="utf-8")
        make_lm_checkpoint(lm_data, root / f"{name}.pt", seed=2)
        lms[name] = root / f"{name}.pt"
    return data, root / "asr.pt", lms


def test_dictionary_mismatch_is_one_line_error(lm_setup, tmp_path):
    data, _, lms = lm_setup
    dict_path = str(data / "dict.txt")
    check_lm_dictionary(str(lms["good"]), dict_path)
    with pytest.raises(LmDictionaryError) as e:
        load_lm(str(lms["other_size"]), dict_path)
    msg = str(e.value.code)
    assert "\n" not in msg and msg.startswith("error: ")
    assert str(lms["other_size"]) in msg and dict_path in msg and "--srcdict" in msg
    with pytest.raises(LmDictionaryError) as e:  # same size, other symbols: found via the LM's dict.txt
        load_lm(str(lms["same_size"]), dict_path)
    msg = str(e.value.code)
    assert str(lms["same_size"]) in msg and dict_path in msg and "id 4" in msg
    # the LM's data directory moved away: dict.txt next to the checkpoint, else the size check
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(lms["same_size"], moved / "lm.pt")
    shutil.move(str(lms["same_size"].parent / "lm_same_size"), str(tmp_path / "gone"))
    try:
        check_lm_dictionary(str(moved / "lm.pt"), dict_path)  # same size: only the size can be checked
        shutil.copy(tmp_path / "gone" / "dict.txt", moved / "dict.txt")
        with pytest.raises(LmDictionaryError):
            check_lm_dictionary(str(moved / "lm.pt"), dict_path)
    finally:
        shutil.move(str(tmp_path / "gone"), str(lms["same_size"].parent / "lm_same_size"))


def fairseq_generate(data, ckpt, out, *extra):
    from fairseq import options
    from fairseq_cli.generate import main

    argv = [str(data), "--user-dir", USER_DIR, "--task", "cif_asr", "--path", str(ckpt), "--gen-subset", "test",
            "--cpu", "--num-workers", "0", "--results-path", str(out), "--batch-size", "2", "--beam", "3",
            "--load-teacher", "no", *extra]
    main(options.parse_args_and_arch(options.get_generation_parser(), argv))
    text = (out / "generate-test.txt").read_text(encoding="utf-8")
    return {int(i): (float(s), h) for i, s, h in re.findall(r"^H-(\d+)\t(\S+)\t(.*)$", text, re.M)}, \
        {int(i): w for i, w in re.findall(r"^D-(\d+)\t\S+\t(.*)$", text, re.M)}


def test_fairseq_generate_passes_the_lm(lm_setup, tmp_path):
    """fairseq-generate --lm-path/--lm-weight, in process: fairseq loads the LM itself and hands it to
    the task's build_generator; the result equals a direct CifGenerator with load_lm's LM."""
    from fairseq import checkpoint_utils

    data, asr_ckpt, lms = lm_setup
    plain, _ = fairseq_generate(data, asr_ckpt, tmp_path / "plain")
    zero, _ = fairseq_generate(data, asr_ckpt, tmp_path / "zero", "--lm-path", str(lms["good"]), "--lm-weight", "0")
    fused, _ = fairseq_generate(data, asr_ckpt, tmp_path / "fused", "--lm-path", str(lms["good"]), "--lm-weight", "2")
    assert len(plain) == 3 and all(h for _, h in plain.values())
    assert zero == plain
    assert fused != plain

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(asr_ckpt)])
    task.load_dataset("test")
    ds = task.dataset("test")
    lm = load_lm(str(lms["good"]), str(data / "dict.txt"), task.target_dictionary)
    gen = CifGenerator(models, task.target_dictionary, beam_size=3, lm_model=lm, lm_weight=2.0,
                       count_search=task.cfg.cif_count_search, ctc_weight=task.cfg.cif_ctc_weight)
    d = task.target_dictionary
    for i in range(len(ds)):
        (utt,) = gen.generate(models, ds.collater([ds[i]]))
        h = utt[0]
        assert fused[i][1] == d.string(h["tokens"], extra_symbols_to_ignore={d.eos()})
        assert fused[i][0] == pytest.approx(h["score"] / math.log(2), abs=1e-3)


def test_fairseq_generate_mismatch_no_traceback(lm_setup, tmp_path):
    data, asr_ckpt, lms = lm_setup
    cmd = [str(Path(sys.executable).parent / "fairseq-generate"), str(data), "--user-dir", USER_DIR,
           "--task", "cif_asr", "--path", str(asr_ckpt), "--gen-subset", "test", "--cpu", "--num-workers", "0",
           "--load-teacher", "no", "--lm-path", str(lms["other_size"]), "--lm-weight", "0.5"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: language model ") and str(lms["other_size"]) in last
    assert str(data / "dict.txt") in last


def test_transcribe_lm_options(lm_setup, tmp_path):
    """fairseq-hkd-transcribe --lm-path/--lm-weight: the words fairseq-generate prints with the same LM."""
    from fairseq_hkd.generation.transcribe import cli_main

    data, asr_ckpt, lms = lm_setup
    _, words = fairseq_generate(data, asr_ckpt, tmp_path / "fused", "--lm-path", str(lms["good"]), "--lm-weight", "2")
    _, plain_words = fairseq_generate(data, asr_ckpt, tmp_path / "plain")
    assert words != plain_words
    out = tmp_path / "transcripts.txt"
    cli_main(["--path", str(asr_ckpt), "--manifest", str(data / "test.tsv"), "--beam", "3", "--cpu", "--quiet",
              "--lm-path", str(lms["good"]), "--lm-weight", "2", "--output", str(out)])
    got = [line.split("\t")[1] for line in out.read_text(encoding="utf-8").splitlines()]
    assert got == [words[i] for i in range(len(got))]
    with pytest.raises(LmDictionaryError):
        cli_main(["--path", str(asr_ckpt), "--manifest", str(data / "test.tsv"), "--cpu", "--quiet",
                  "--lm-path", str(lms["other_size"]), "--lm-weight", "2", "--output", str(out)])


def test_fairseq_generate_bad_search_option_is_one_line(lm_setup):
    """A search option CifGenerator cannot run (--nbest above --beam, --cif-ctc-weight outside [0, 1]) stops a real
    fairseq-generate with one ``error:`` line naming it (errors.py), no traceback."""
    data, asr_ckpt, _ = lm_setup
    base = [str(Path(sys.executable).parent / "fairseq-generate"), str(data), "--user-dir", USER_DIR, "--task", "cif_asr",
            "--path", str(asr_ckpt), "--gen-subset", "test", "--cpu", "--num-workers", "0", "--load-teacher", "no"]
    for extra, named in ((["--beam", "2", "--nbest", "3"], "--nbest 3 cannot exceed --beam 2"),
                         (["--cif-ctc-weight", "1.5"], "--cif-ctc-weight must be in [0, 1], got 1.5")):
        proc = subprocess.run(base + extra, cwd=REPO, capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1] == f"error: {named}"
