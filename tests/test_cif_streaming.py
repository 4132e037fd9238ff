"""CIF over chunks with carried state == CIF over the whole utterance (ops/cif/streaming.py)."""
import pytest
import torch

from fairseq_hkd.ops.cif import cif, cif_reference
from fairseq_hkd.ops.cif.streaming import CifStream, cif_stream_finish, cif_stream_step


def _stream(alpha, h, padding_mask, chunk, tail=0.5, threshold=1.0):
    """Feed [B, T] in chunks of `chunk` frames; -> per-utterance tokens [L_b, C], fire frames, state."""
    B, T, C = h.shape
    state = CifStream.start(B, C)
    toks = [[] for _ in range(B)]
    fires = [[] for _ in range(B)]
    for s in range(0, T, chunk):
        pm = None if padding_mask is None else padding_mask[:, s:s + chunk]
        out, state = cif_stream_step(alpha[:, s:s + chunk], h[:, s:s + chunk], state, pm, threshold)
        for b in range(B):
            toks[b].append(out.embeddings[b])
            fires[b] += out.fire_frames[b].tolist()
    tails, state = cif_stream_finish(state, tail, threshold, dtype=h.dtype)
    return [torch.cat(toks[b] + [tails[b]]) for b in range(B)], fires, state


def _inputs(seed=0, B=3, T=41, C=5):
    g = torch.Generator().manual_seed(seed)
    alpha = torch.rand(B, T, generator=g, dtype=torch.float64) * 0.7
    h = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    lengths = torch.tensor([T, T - 9, 13])[:B]
    padding_mask = torch.arange(T)[None] >= lengths[:, None]
    return alpha, h, padding_mask


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 40, 41, 64])
@pytest.mark.parametrize("threshold", [1.0, 0.8])
def test_chunked_equals_whole_utterance_op_and_float64_loop(chunk, threshold):
    alpha, h, pm = _inputs()
    toks, fires, state = _stream(alpha, h, pm, chunk, 0.5, threshold)
    whole = cif(alpha, h, pm, threshold=threshold, tail_threshold=0.5, impl="torch")
    ref, ref_fire, _ = cif_reference(alpha, h, pm, threshold=threshold, tail_threshold=0.5)
    for b in range(alpha.shape[0]):
        L = int(whole.lengths[b])
        assert toks[b].shape[0] == L == ref[b].shape[0]
        # fire frames: bitwise the whole-utterance plan's
        assert fires[b] == whole.fire_mask[b].nonzero().flatten().tolist() == ref_fire[b].nonzero().flatten().tolist()
        torch.testing.assert_close(toks[b], whole.embeddings[b, :L], rtol=0, atol=1e-12)
        torch.testing.assert_close(toks[b], ref[b], rtol=0, atol=1e-10)
    assert state.frames.tolist() == (~pm).sum(1).tolist()


def test_running_sum_is_bitwise_the_whole_cumsum_where_rounding_decides_fires():
    # 0.1 ten times is 0.9999999999999999 in float64: whether frame 10 fires depends on the order
    # of the additions. Chunked sums must round exactly as the whole utterance's cumsum does.
    alpha = torch.full((1, 60), 0.1, dtype=torch.float64)
    h = torch.ones(1, 60, 2, dtype=torch.float64)
    whole = cif(alpha, h, None, tail_threshold=0.5, impl="torch")
    for chunk in (1, 3, 7, 10, 11):
        toks, fires, state = _stream(alpha, h, None, chunk)
        assert fires[0] == whole.fire_mask[0].nonzero().flatten().tolist()
        assert state.total[0].item() == alpha[0].cumsum(0)[-1].item()  # bitwise
        assert toks[0].shape[0] == int(whole.lengths[0])


def test_silence_gives_no_tokens_and_no_tail():
    alpha = torch.zeros(2, 30)
    h = torch.randn(2, 30, 4)
    toks, fires, state = _stream(alpha, h, None, 8)
    assert all(t.shape == (0, 4) for t in toks) and fires == [[], []] and state.fired.tolist() == [0, 0]


def test_empty_chunks_and_a_stream_of_one_frame_at_a_time_keep_h_dtype():
    alpha, h, _ = _inputs(seed=1, B=1, T=12)
    state = CifStream.start(1, h.shape[2])
    out, state = cif_stream_step(alpha[:, :0], h[:, :0].float(), state)
    assert out.embeddings[0].shape == (0, h.shape[2]) and state.frames.tolist() == [0]
    toks = []
    for s in range(12):
        out, state = cif_stream_step(alpha[:, s:s + 1], h[:, s:s + 1].float(), state)
        toks.append(out.embeddings[0])
        assert out.embeddings[0].dtype == torch.float32
    tail, state = cif_stream_finish(state, 0.5)
    whole = cif(alpha, h.float(), None, tail_threshold=0.5, impl="torch")
    torch.testing.assert_close(torch.cat(toks + tail), whole.embeddings[0, :int(whole.lengths[0])], rtol=1e-6, atol=1e-6)


def test_mismatched_chunk_is_an_error():
    state = CifStream.start(2, 4)
    with pytest.raises(ValueError, match="does not match the stream state"):
        cif_stream_step(torch.rand(2, 5), torch.rand(2, 5, 3), state)
    with pytest.raises(ValueError, match="expected alpha"):
        cif_stream_step(torch.rand(2, 5), torch.rand(2, 6, 4), state)
