"""The model, the criterion and fairseq-train / fairseq-generate on a CUDA device (skipped without one).

- test_model_step_cuda_matches_cpu: the cif_hkd loss and every parameter gradient of a small CIF
  model on CUDA (the Triton CIF kernels, chosen by the op itself, inside the model's forward) equal
  those of the same model on the CPU (the PyTorch CIF path); float32 with TF32 off on both.
- test_train_and_generate_on_cuda: fairseq-train on the GPU (fp32, ``--fp16``, ``--amp``, and bf16
  autocast ``--autocast-bf16 yes``; fairseq 0.12's own ``--bf16`` means TPU) overfits
  the tiny corpus (the loss falls below 0.35 of its first value; float16 overflows may skip a few updates),
  and fairseq-generate of the fp32 checkpoint on CUDA writes the same hypotheses as with ``--cpu``.

Run on a GPU machine with ``python -m pytest tests/test_gpu.py tests/test_cif_op_triton.py``.
"""
import copy
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from train_runs import run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

REPO = Path(__file__).resolve().parents[1]
USER_DIR = str(REPO / "fairseq_hkd")


@pytest.fixture
def no_tf32():
    """cuDNN convolutions default to TF32 (10-bit mantissa): compare float32 with float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _loss_and_grads(model, crit, sample):
    model.zero_grad()
    crit.zero_grad()
    loss, sample_size, log = crit(model, sample)
    loss.backward()
    loss = loss.detach()
    grads = {n: p.grad.detach().double().cpu() for n, p in
             list(model.named_parameters()) + [("crit." + n, p) for n, p in crit.named_parameters()]
             if p.grad is not None}
    return float(loss), grads, log


def test_model_step_cuda_matches_cpu(no_tf32, monkeypatch):
    from fairseq import utils

    import fairseq_hkd.ops.cif as cif_module
    from test_hkd_criterion import _crit, _hkd_sample
    from test_model_cif import small_model

    used = []
    resolve = cif_module._resolve_impl
    monkeypatch.setattr(cif_module, "_resolve_impl", lambda impl, h: used.append(resolve(impl, h)) or used[-1])

    model = small_model().eval()  # no dropout: both devices compute the same function
    sample = _hkd_sample(model)
    # K = N - 1 negatives (every other token of the batch): ACD does not depend on the random draw
    crit = _crit(model, ctc_weight=0.5, quantity_weight=1.0, acd_weight=1.0, lrd_weight=0.01,
                 acd_negatives=700, acd_small_batch_ratio=0.99, acd_temperature=0.1)
    model_gpu, crit_gpu = copy.deepcopy(model).cuda(), copy.deepcopy(crit).cuda()

    loss_cpu, grads_cpu, log_cpu = _loss_and_grads(model, crit, sample)
    assert used and set(used) == {"torch"}
    used.clear()
    loss_gpu, grads_gpu, log_gpu = _loss_and_grads(model_gpu, crit_gpu, utils.move_to_cuda(sample))
    assert used and set(used) == {"triton"}

    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-5)
    for key in ("ce_loss", "ctc_loss", "quantity_loss", "acd_loss", "lrd_loss"):
        assert float(log_gpu[key]) == pytest.approx(float(log_cpu[key]), rel=1e-4, abs=1e-6), key
    for key in ("fire_correct", "acd_correct", "tf_errors"):
        assert float(log_gpu[key]) == float(log_cpu[key]), key
    assert grads_gpu.keys() == grads_cpu.keys() and len(grads_cpu) > 100
    # each tensor to 1e-4 of its own largest entry; the attention key biases, whose exact gradient is
    # 0 (a softmax does not see a shift shared by all keys), to 1e-6 of the largest gradient overall
    overall = max(float(g.abs().max()) for g in grads_cpu.values())
    for name, g in grads_cpu.items():
        err = float((grads_gpu[name] - g).abs().max())
        assert err <= 1e-4 * float(g.abs().max()) + 1e-6 * overall, (name, err)


def _train(data: Path, save_dir: Path, *extra: str) -> str:
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(data), "--user-dir", USER_DIR, "--task", "cif_asr",
           "--arch", "cif_tiny", "--criterion", "cif", "--optimizer", "adam", "--lr", "3e-3",
           "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "30", "--clip-norm", "1.0",
           "--max-tokens", "20000", "--max-epoch", "150", "--spec-aug-prob", "0",
           "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--disable-validation", "--num-workers", "0",
           "--seed", "1", "--log-interval", "1", "--log-format", "json", "--no-progress-bar", *extra]
    return run(cmd, timeout=900)


def _generate(data: Path, ckpt: Path, *extra: str):
    cmd = [sys.executable, "-m", "fairseq_cli.generate", str(data), "--user-dir", USER_DIR, "--task", "cif_asr",
           "--path", str(ckpt), "--gen-subset", "train", "--beam", "4", "--scoring", "wer",
           "--num-workers", "0", "--batch-size", "3", *extra]
    out = run(cmd, timeout=600)
    return {int(i): (float(s), h) for i, s, h in re.findall(r"^D-(\d+)\t(\S+)\t(.*)$", out, re.M)}, out


@pytest.fixture(scope="module")
def gpu_corpus(tmp_path_factory):
    from corpus import make_tiny_corpus

    return make_tiny_corpus(tmp_path_factory.mktemp("gpu_corpus") / "data", n_train=4, n_valid=2)


PRECISION = {"fp32": [], "fp16": ["--fp16"], "amp": ["--amp"], "bf16": ["--autocast-bf16", "yes"]}


@pytest.mark.parametrize("precision", list(PRECISION))
def test_train_and_generate_on_cuda(gpu_corpus, tmp_path, precision):
    extra = PRECISION[precision]
    log = _train(gpu_corpus, tmp_path / "ckpt", *extra)
    assert "capabilities =" in log, log[-2000:]  # fairseq prints the CUDA device it trains on
    losses = [float(json.loads(m)["loss"]) for m in re.findall(r"\| train_inner \| (\{.*\})\s*$", log, re.M)]
    assert len(losses) >= 120, log[-2000:]  # one update per epoch; float16 overflows skip a few
    if precision == "bf16":
        assert "under bf16 autocast: on (--autocast-bf16 yes on cuda" in log, log[-2000:]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"{precision}: {len(losses)} updates, loss {first:.3f} -> {last:.3f}")
    assert last < 0.35 * first, (first, last)
    if precision != "fp32":
        return
    ckpt = tmp_path / "ckpt" / "checkpoint_last.pt"
    gpu, out_gpu = _generate(gpu_corpus, ckpt)
    cpu, _ = _generate(gpu_corpus, ckpt, "--cpu")
    assert len(gpu) == 4 and gpu.keys() == cpu.keys()
    assert {i: h for i, (_, h) in gpu.items()} == {i: h for i, (_, h) in cpu.items()}
    for i in gpu:
        assert gpu[i][0] == pytest.approx(cpu[i][0], abs=1e-3)
    wer = re.search(r"WER: ([0-9.]+)", out_gpu)
    print(f"generate on the training utterances: WER {wer.group(1) if wer else '?'} (CPU and GPU agree)")


def test_sentence_joins_train_and_decode_on_cuda(gpu_corpus, tmp_path):
    """--join-prob on CUDA: the joined batches (built from the CUDA sample) train, and the
    checkpoint decodes with inner </s> allowed (auto) to the same hypotheses on CUDA and CPU."""
    log = _train(gpu_corpus, tmp_path / "ckpt", "--cmvn", "none", "--join-prob", "1", "--max-epoch", "80")
    losses = [float(json.loads(m)["loss"]) for m in re.findall(r"\| train_inner \| (\{.*\})\s*$", log, re.M)]
    assert len(losses) >= 80 and all(math.isfinite(x) for x in losses), log[-2000:]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"joins: {len(losses)} updates, loss {first:.3f} -> {last:.3f}")
    assert last < 0.5 * first, (first, last)
    ckpt = tmp_path / "ckpt" / "checkpoint_last.pt"
    gpu, _ = _generate(gpu_corpus, ckpt, "--cmvn", "none")
    cpu, _ = _generate(gpu_corpus, ckpt, "--cmvn", "none", "--cpu")
    assert len(gpu) == 4 and {i: h for i, (_, h) in gpu.items()} == {i: h for i, (_, h) in cpu.items()}
    for i in gpu:
        assert gpu[i][0] == pytest.approx(cpu[i][0], abs=1e-3)
