"""Data-parallel ``fairseq-train`` with two processes (CPU, gloo) against one process with the same
effective batch, training ``cif_hkd`` with a teacher store from a tiny random BERT.

One process with ``--update-freq 2`` and two ranks with ``--update-freq 1`` see the same batches:
fairseq shuffles the list of batches with (seed, epoch) and rank r takes batches r, r+2, ..., so
update k uses batches 2k and 2k+1 either way. Gradients are summed over both and divided by the
summed token count in both cases; only the rounding of that division and of the all-reduce differ.
Dropout is 0 and ACD uses every other position of the batch as a negative (no random draw), so the
two runs must agree to float32 rounding, amplified over 4 Adam steps:

- every logged per-update training loss (fairseq rounds them to 3 decimals): equal strings;
- every trainable parameter of the model AND of the criterion (the ACD/LRD projections, which
  fairseq wraps in its own DDP module): max |difference| <= 1e-5 (measured: ~2e-7);
- the exact loss of the final parameters on the valid and train splits: relative difference <= 1e-5
  (measured: ~1e-8).

Batch-norm running statistics are left out: each rank updates its own from its half of the batches
and rank 0 saves its own (fairseq's default, ``--broadcast-buffers`` off); docs/TRAINING.md says why
that is harmless. The run also proves DDP reports no unused parameters with the criterion's
projections (``--ddp-backend pytorch_ddp`` raises on them at the second update).

Processes are started by hand (``--distributed-no-spawn`` + ``--distributed-rank``), the only way
fairseq's multi-process training runs on CPU.
"""
import subprocess

import pytest

from train_runs import REPO, checkpoint_params, env, exact_loss, free_port, json_records, make_hkd_data, run, train_cmd

pytestmark = pytest.mark.slow

UPDATES = 4
DDP_BACKEND = "legacy_ddp"  # the only backend fairseq runs on CPU (see docs/TRAINING.md)
PARAM_ATOL = 1e-5
LOSS_RTOL = 1e-5


@pytest.fixture(scope="module")
def tiny_hkd_data(tmp_path_factory):
    return make_hkd_data(tmp_path_factory.mktemp("hkd_data"))


def _run_two_ranks(venv_bin, data, save_dir, ddp_backend, *extra, timeout=300):
    port = free_port()
    procs, logs = [], []
    for rank in range(2):
        log = open(save_dir.parent / f"{save_dir.name}.rank{rank}.log", "w+")
        cmd = train_cmd(venv_bin, data, save_dir, *extra, "--distributed-world-size", "2", "--distributed-rank",
                        str(rank), "--distributed-no-spawn", "--distributed-backend", "gloo",
                        "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--ddp-backend", ddp_backend)
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT, text=True))
        logs.append(log)
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    assert codes == [0, 0], f"exit codes {codes}\n" + "\n".join(t[-3000:] for t in texts)
    return texts[0]


def _trainable(params):
    return {k: v for k, v in params.items() if "running_" not in k and "num_batches_tracked" not in k}


def test_two_ranks_match_update_freq_2(tmp_path, venv_bin, tiny_hkd_data):
    data = tiny_hkd_data
    common = ("--batch-size", "2", "--max-update", str(UPDATES))
    single_log = run(train_cmd(venv_bin, data, tmp_path / "single", *common, "--update-freq", "2"))
    ddp_log = _run_two_ranks(venv_bin, data, tmp_path / "ddp", DDP_BACKEND, *common)

    single, ddp = json_records(single_log, "train_inner"), json_records(ddp_log, "train_inner")
    assert len(single) == len(ddp) == UPDATES, (single_log[-2000:], ddp_log[-2000:])
    for a, b in zip(single, ddp):
        # same batches: same token counts; same numbers: same rounded losses, ACD/LRD included
        assert (a["wpb"], a["bsz"]) == (b["wpb"], b["bsz"]) and float(a["bsz"]) == 4, (a, b)
        for key in ("loss", "ce_loss", "ctc_loss", "quantity_loss", "acd_loss", "lrd_loss"):
            # fairseq logs 3 decimals; the all-reduce sums in another order than --update-freq, so a
            # value at a rounding boundary may print one step apart: allow one step (+ float error)
            assert abs(float(a[key]) - float(b[key])) <= 1.5e-3, (key, a, b)

    p1 = _trainable(checkpoint_params(tmp_path / "single" / "checkpoint_last.pt"))
    p2 = _trainable(checkpoint_params(tmp_path / "ddp" / "checkpoint_last.pt"))
    assert p1.keys() == p2.keys() and any(k.startswith("criterion.acd_proj") for k in p1)
    worst = max((p1[k].double() - p2[k].double()).abs().max().item() for k in p1)
    assert worst <= PARAM_ATOL, worst
    for split in ("valid", "train"):
        l1 = exact_loss(data, tmp_path / "single" / "checkpoint_last.pt", split)
        l2 = exact_loss(data, tmp_path / "ddp" / "checkpoint_last.pt", split)
        assert abs(l1 - l2) <= LOSS_RTOL * abs(l1), (split, l1, l2)
    assert float(single[-1]["loss"]) < float(single[0]["loss"]), [r["loss"] for r in single]


@pytest.mark.parametrize("acd_weight,lrd_weight", [(1.0, 0.01), (1.0, 0.0), (0.0, 0.01)])
def test_pytorch_ddp_finds_no_unused_parameters(tmp_path, tiny_hkd_data, acd_weight, lrd_weight):
    """PyTorch's DDP (fairseq's default ``--ddp-backend pytorch_ddp`` on GPUs) with
    ``find_unused_parameters=False`` raises at the second step when a parameter got no gradient in
    the first. Model and criterion are wrapped separately, as fairseq does (DDP inside its
    ModuleProxyWrapper, which forwards attribute access such as ``model.cif``), in a one-process gloo
    group (fairseq's own factory passes CUDA device ids, so it cannot wrap a CPU module)."""
    import torch
    import torch.distributed as dist
    from fairseq.distributed import ModuleProxyWrapper
    from torch.nn.parallel import DistributedDataParallel as DDP

    from train_runs import build_task_model_criterion

    task, model, criterion = build_task_model_criterion(
        tiny_hkd_data, "--acd-weight", str(acd_weight), "--lrd-weight", str(lrd_weight))
    assert (criterion.acd_proj is None) == (acd_weight == 0) and (criterion.lrd_proj is None) == (lrd_weight == 0)
    task.load_dataset("train")
    ds = task.dataset("train")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp_model = ModuleProxyWrapper(DDP(model, find_unused_parameters=False))
        ddp_criterion = ModuleProxyWrapper(DDP(criterion, find_unused_parameters=False))
        params = list(model.parameters()) + list(criterion.parameters())
        for step in range(2):
            for p in params:
                p.grad = None
            # fairseq calls criterion(model, sample); the wrapped criterion gets the wrapped model
            loss, _, _ = ddp_criterion(ddp_model, ds.collater([ds[2 * step], ds[2 * step + 1]]))
            loss.backward()
            unused = [n for n, p in list(model.named_parameters()) + list(criterion.named_parameters())
                      if p.requires_grad and p.grad is None]
            assert not unused, unused
    finally:
        dist.destroy_process_group()
    assert torch.isfinite(loss)
