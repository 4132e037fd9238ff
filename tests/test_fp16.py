"""``--fp16``: training runs with half parameters, and a float16 overflow in the forward pass takes
fairseq's own overflow path (update skipped, loss scale halved) instead of ending the run, while
non-finite input features remain an error naming the utterance.

The Trainer is fairseq's own (``--fp16 --memory-efficient-fp16 --cpu``, or the flat-gradient-free
``FP16Optimizer``), fed one batch at a time with ``Trainer.train_step``, as fairseq-train does. The
overflow is injected where fp16 overflows in practice: the encoder output (half) gets inf values.
Expected numbers are fairseq's documented rule, computed by hand: the loss scale starts at
``--fp16-init-scale`` 128 and an overflow divides it by 2; the update count stays 0 and every
parameter keeps its value bit for bit.
"""
import logging

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer

from fairseq_hkd.criterions.guards import NonFiniteLossError
from fairseq_hkd.models.cif_middleware import CifMiddleware

from train_runs import HKD, TINY_MODEL, make_hkd_data

pytestmark = pytest.mark.slow
INIT_SCALE = 128

OPTIMIZERS = {
    "memory_efficient": ("--memory-efficient-fp16",),
    "fp16_optimizer": ("--fp16-no-flatten-grads",),  # the flat fp32 copy needs CUDA; unflattened works on CPU
}


@pytest.fixture(scope="module")
def hkd_data(tmp_path_factory):
    return make_hkd_data(tmp_path_factory.mktemp("fp16"))


@pytest.fixture
def cpu_overflow_handler(monkeypatch):
    """fairseq's overflow handler ends with ``grad_norm = torch.tensor(0.0).cuda()``, which a CPU-only
    torch cannot do; on CPU that tensor stays where it is (nothing else in the path touches CUDA)."""
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)


def _trainer(data, save_dir, *extra):
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data), "--task", "cif_asr", *TINY_MODEL, *HKD, "--spec-aug-prob", "0", "--optimizer", "adam",
        "--lr", "1e-3", "--clip-norm", "1.0", "--cpu", "--fp16", "--fp16-init-scale", str(INIT_SCALE),
        "--save-dir", str(save_dir), "--seed", "1", *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    torch.manual_seed(1)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return task, Trainer(cfg, task, model, criterion)


def _batch(task):
    ds = task.dataset("train")
    return ds.collater([ds[0], ds[1]])


def _params(trainer):
    named = list(trainer.model.named_parameters()) + [(f"criterion.{n}", p) for n, p in trainer.criterion.named_parameters()]
    return {n: p.detach().clone() for n, p in named}


def _poison_encoder_output(model, monkeypatch):
    """The encoder's output overflows float16 on every frame of utterance 0 (what an fp16 overflow
    in the last conformer layer gives); returns the list the CIF weights' finiteness is recorded in."""
    original = model.encoder.forward
    seen = []

    def forward(src_tokens, src_lengths):
        out = original(src_tokens, src_lengths)
        assert out["encoder_out"].dtype == torch.float16  # --fp16: the encoder computed in half
        out["encoder_out"] = out["encoder_out"].clone()
        out["encoder_out"][0, : int(out["encoder_lengths"][0])] = float("inf")
        return out

    predict = model.cif.predict_alpha

    def predict_alpha(h, padding_mask):
        alpha = predict(h, padding_mask)
        seen.append(bool(torch.isfinite(alpha).all()))
        return alpha

    monkeypatch.setattr(model.encoder, "forward", forward)
    monkeypatch.setattr(model.cif, "predict_alpha", predict_alpha)
    return seen


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_fp16_overflow_skips_the_update_and_halves_the_loss_scale(hkd_data, tmp_path, monkeypatch, caplog,
                                                                   cpu_overflow_handler, optimizer):
    task, trainer = _trainer(hkd_data, tmp_path, *OPTIMIZERS[optimizer])
    assert next(trainer.model.parameters()).dtype == torch.float16
    assert trainer.criterion.acd_proj.weight.dtype == torch.float16  # cif_hkd's projections are half too
    assert trainer.optimizer.scaler.loss_scale == INIT_SCALE
    before = _params(trainer)
    batch = _batch(task)

    with monkeypatch.context() as m:
        seen = _poison_encoder_output(trainer.model, m)
        with caplog.at_level(logging.INFO):
            log = trainer.train_step([batch])
    assert seen == [False]  # the CIF weights were NaN: the middleware did not raise
    assert log is None  # fairseq's overflow path: no logging output for a skipped update
    assert trainer.get_num_updates() == 0
    assert trainer.optimizer.scaler.loss_scale == INIT_SCALE / 2
    after = _params(trainer)
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert "gradient overflow detected" in caplog.text  # fairseq's own message
    assert "float16 overflow in the forward pass" in caplog.text and "skips the update" in caplog.text
    assert not (tmp_path / "crash.pt").exists()

    # the next (clean) batch trains normally at the lower scale
    log = trainer.train_step([batch])
    assert log is not None and trainer.get_num_updates() == 1
    assert torch.isfinite(torch.tensor(log["loss"])) and log["acd_loss"] > 0
    assert trainer.optimizer.scaler.loss_scale == INIT_SCALE / 2
    changed = _params(trainer)
    assert not torch.equal(changed["encoder.subsample.out.weight"], before["encoder.subsample.out.weight"])
    assert not torch.equal(changed["criterion.acd_proj.weight"], before["criterion.acd_proj.weight"])


def test_fp16_overflow_of_a_loss_term_takes_the_same_path(hkd_data, tmp_path, cpu_overflow_handler):
    """Finite CIF weights, but the decoder's logits overflow (one output row inf): the CE is NaN,
    which in float16 is an overflow too, also with --nonfinite-loss error (the default)."""
    task, trainer = _trainer(hkd_data, tmp_path, *OPTIMIZERS["memory_efficient"])
    assert trainer.get_criterion().cfg.nonfinite_loss == "error"
    with torch.no_grad():
        trainer.model.decoder.output_projection.weight[5].fill_(float("inf"))
    assert trainer.train_step([_batch(task)]) is None
    assert trainer.get_num_updates() == 0 and trainer.optimizer.scaler.loss_scale == INIT_SCALE / 2


def test_fp16_non_finite_features_stay_an_error(hkd_data, tmp_path, cpu_overflow_handler):
    task, trainer = _trainer(hkd_data, tmp_path, *OPTIMIZERS["memory_efficient"])
    batch = _batch(task)
    batch["net_input"]["src_tokens"][1, 4, 7] = float("nan")
    bad = batch["utt_id"][1]
    with pytest.raises(NonFiniteLossError, match=rf"input features contain NaN/inf for {bad}: check the audio"):
        trainer.train_step([batch])
    assert trainer.optimizer.scaler.loss_scale == INIT_SCALE  # not mistaken for an overflow


# --------------------------------------------------------------------------------- the middleware's rule
def _middleware_inputs(dtype):
    torch.manual_seed(0)
    mw = CifMiddleware(8, dropout=0.0).to(dtype)
    h = torch.randn(2, 6, 8).to(dtype)
    h[1, 2] = float("inf")
    return mw, h, torch.zeros(2, 6, dtype=torch.bool), torch.tensor([3, 2])


def test_middleware_float16_teacher_forced_overflow_gives_nan_embeddings_of_the_target_shape():
    mw, h, mask, target_lengths = _middleware_inputs(torch.float16)
    alpha, out = mw(h, mask, target_lengths)
    assert not torch.isfinite(alpha[1]).all() and torch.isfinite(alpha[0]).all()
    assert out.embeddings.shape == (2, 3, 8) and torch.isnan(out.embeddings).all()
    assert out.lengths.tolist() == [3, 2] and not out.fire_mask.any()


def test_middleware_non_finite_weights_are_errors_otherwise():
    mw, h, mask, target_lengths = _middleware_inputs(torch.float32)  # float32: divergence
    with pytest.raises(FloatingPointError, match=r"batch row\(s\) \[1\].*training diverged"):
        mw(h, mask, target_lengths)
    mw, h, mask, _ = _middleware_inputs(torch.float16)  # float16 decoding: no loss scaler to hand it to
    with pytest.raises(FloatingPointError, match=r"batch row\(s\) \[1\].*float16 and overflowed: decode in float32"):
        mw(h, mask)
