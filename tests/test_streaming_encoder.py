"""Chunk-aware conformer encoder (issue 17): chunk masks, causal convolution, dynamic chunk training,
and the chunk-by-chunk forward pass with caches (models/encoder_stream.py) against the masked
whole-utterance forward pass."""
import argparse
import dataclasses

import pytest
import torch

from fairseq_hkd.models.chunk_attention import chunk_attention_mask, sample_chunk
from fairseq_hkd.models.cif_model import CifModel, CifModelConfig
from fairseq_hkd.models.encoder_stream import EncoderStream, WeightStream
from test_model_cif import _Task, arch_config, make_dict, small_model


def _feats(T, seed=0, dim=20):
    return torch.randn(1, T, dim, generator=torch.Generator().manual_seed(seed))


def _stream(encoder, x, chunk, piece, left=None):
    s = EncoderStream(encoder, chunk=chunk, left_chunks=left)
    outs = [s.accept(x[0, i:i + piece]) for i in range(0, x.size(1), piece)]
    return torch.cat(outs + [s.finish()])


def test_chunk_mask_literal():
    allowed = chunk_attention_mask(5, 2, left_chunks=-1)
    assert allowed.int().tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0],
                                      [1, 1, 1, 1, 1]]
    allowed = chunk_attention_mask(6, 2, left_chunks=0)
    assert allowed.int().tolist()[4] == [0, 0, 0, 0, 1, 1]
    assert chunk_attention_mask(6, 2, left_chunks=1).int().tolist()[4] == [0, 0, 1, 1, 1, 1]


def test_sample_chunk_follows_u2():
    g = torch.Generator().manual_seed(0)
    draws = [sample_chunk(100, 25, g) for _ in range(400)]
    assert 0.4 < sum(d == 0 for d in draws) / 400 < 0.6  # full context about half the time
    assert all(0 <= d <= 25 for d in draws) and len(set(draws)) > 15
    assert sample_chunk(0, 25, g) == 0


def test_one_chunk_covering_everything_equals_full_context():
    """rel_pos_attention (masked path) == fairseq's RelPositionMultiHeadedAttention when nothing is masked."""
    m = small_model(seed=3).eval()
    x, lengths = torch.cat([_feats(83), _feats(83, 1)]), torch.tensor([83, 61])
    x[1, 61:] = 0
    with torch.no_grad():
        full = m.encoder(x, lengths)["encoder_out"]
        m.encoder.set_chunk(1000)
        chunked = m.encoder(x, lengths)["encoder_out"]
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool_after", ["", "1"])
def test_chunked_model_outputs_do_not_depend_on_later_chunks(pool_after):
    m = small_model(seed=2, encoder_causal_conv=True, encoder_chunk_size=4, encoder_pool_after=pool_after).eval()
    x = _feats(120)
    y = x.clone()
    y[:, 70:] = torch.randn(1, 50, 20)  # changes subsampled frames from ~17 on (4x), encoder frames 17+ / 8+
    with torch.no_grad():
        a = m.encoder(x, torch.tensor([120]))["encoder_out"][0]
        b = m.encoder(y, torch.tensor([120]))["encoder_out"][0]
    first_changed = (70 - 3) // 4 // (2 if pool_after else 1)  # first output frame reading frame 70
    safe = first_changed // 4 * 4  # chunks before the one containing it
    assert safe > 0
    torch.testing.assert_close(a[:safe], b[:safe], rtol=0, atol=0)
    assert not torch.allclose(a[safe + 4:], b[safe + 4:])


@pytest.mark.parametrize("pool_after", ["", "1"])
@pytest.mark.parametrize("left", [-1, 0, 2])
@pytest.mark.parametrize("piece", [1, 13, 400])  # fbank frames per accept: one, not dividing, all
def test_chunk_by_chunk_equals_masked_forward(pool_after, left, piece):
    m = small_model(seed=1, encoder_causal_conv=True, encoder_chunk_size=3, encoder_left_chunks=left,
                    encoder_pool_after=pool_after).eval()
    x = _feats(157)  # 157 frames: 40 subsampled frames, not a multiple of the chunk
    with torch.no_grad():
        ref = m.encoder(x, torch.tensor([157]))["encoder_out"][0]
    h = _stream(m.encoder, x, chunk=3, piece=piece)
    assert h.shape == ref.shape
    torch.testing.assert_close(h, ref, rtol=1e-5, atol=1e-5)


def test_odd_last_chunk_before_pooling():
    """163 fbank frames -> 41 subsampled frames: the last chunk has an odd frame count before the
    max-pooling (ceil mode, as the whole-utterance pooling)."""
    m = small_model(seed=6, encoder_causal_conv=True, encoder_chunk_size=2, encoder_left_chunks=1,
                    encoder_pool_after="1").eval()
    x = _feats(163, seed=2)
    with torch.no_grad():
        ref = m.encoder(x, torch.tensor([163]))["encoder_out"][0]
    assert ref.size(0) == 21
    torch.testing.assert_close(_stream(m.encoder, x, chunk=2, piece=13), ref, rtol=1e-5, atol=1e-5)


def test_left_context_matters():
    """The caches are really used: a stream with 0 left chunks differs from one with all."""
    m = small_model(seed=1, encoder_causal_conv=True, encoder_chunk_size=3).eval()
    x = _feats(157)
    assert not torch.allclose(_stream(m.encoder, x, 3, 20, left=0), _stream(m.encoder, x, 3, 20, left=-1), atol=1e-3)


def test_stream_shorter_than_a_chunk_is_the_offline_forward_exactly():
    m = small_model(seed=1).eval()
    x = _feats(57)
    with torch.no_grad():
        ref = m.encoder(x, torch.tensor([57]))["encoder_out"][0]
    assert torch.equal(_stream(m.encoder, x, chunk=100, piece=5), ref)
    s = EncoderStream(m.encoder, chunk=4)
    assert s.finish().shape == (0, 16)  # an empty stream
    with pytest.raises(RuntimeError, match="after finish"):
        s.accept(x[0])


@pytest.mark.parametrize("piece", [1, 4, 1000])
def test_weight_stream_equals_predict_alpha(piece):
    m = small_model(seed=4).eval()
    h = torch.randn(37, 16)
    with torch.no_grad():
        ref = m.cif.predict_alpha(h[None], None)[0]
    ws = WeightStream(m.cif)
    parts = [ws.step(h[i:i + piece]) for i in range(0, 37, piece)] + [ws.step(h[:0], final=True)]
    alpha, hh = torch.cat([a for a, _ in parts]), torch.cat([x for _, x in parts])
    torch.testing.assert_close(alpha, ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(hh, h)
    if piece >= 37:
        assert torch.equal(alpha, ref)


def test_dynamic_chunk_training_trains_and_old_configs_load():
    m = small_model(seed=0, encoder_causal_conv=True, dynamic_chunk_training=True, max_chunk_size=4).train()
    x, lengths = torch.cat([_feats(90), _feats(90, 1)]), torch.tensor([90, 70])
    torch.manual_seed(5)
    chunks = []
    for _ in range(6):
        chunks.append(m.encoder.current_chunk(23))
    assert any(c == 0 for c in chunks) or any(c > 0 for c in chunks)
    out = m.encoder(x, lengths)["encoder_out"]
    out.sum().backward()
    assert m.encoder.layers[0].self_attn.linear_q.weight.grad is not None
    m.eval()
    assert m.encoder.current_chunk(23) == 0  # offline decoding of a dynamic model: full context
    # a checkpoint config from before the streaming options: built as a full-context model
    cfg = arch_config("cif_tiny", input_feat_dim=20)
    old = argparse.Namespace(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(CifModelConfig)
                                if f.name not in ("encoder_causal_conv", "encoder_chunk_size", "dynamic_chunk_training",
                                                  "max_chunk_size", "encoder_left_chunks")})
    enc = CifModel.build_model(old, _Task(make_dict())).encoder
    assert (enc.causal_conv, enc.chunk_size, enc.dynamic_chunk, enc.left_chunks) == (False, 0, False, -1)
    with pytest.raises(ValueError, match="not both"):
        small_model(encoder_chunk_size=4, dynamic_chunk_training=True)
