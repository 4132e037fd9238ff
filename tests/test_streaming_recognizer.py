"""Streaming recognition (generation/streaming.py, issue 17) against offline decoding of the same model.

Small random-weight models (80-dim fbank input, 4x subsampling: 40 ms encoder frames); random
noise as audio (a random CIF predictor fires on it about every other frame).
"""
import numpy as np
import pytest
import torch

from fairseq_hkd.data.fbank import fbank
from fairseq_hkd.generation.cif_generator import CifGenerator
from fairseq_hkd.generation.streaming import StreamError, StreamingRecognizer, chunk_frames
from fairseq_hkd.generation.token_spans import emitted_token_spans
from test_model_cif import favour_eos, small_model


class _Units:
    def decode(self, symbols):
        return "".join(symbols)


def _cmvn(x):
    return (x - 10.0) / 4.0  # a fixed "global" normalisation, applied per frame


def _model(seed=0, **kw):
    return small_model(seed=seed, input_feat_dim=80, **kw).eval()


def _audio(seconds, seed=0):
    return (np.random.RandomState(seed).randn(int(seconds * 16000)) * 0.1).astype(np.float32)


def _offline(model, wav, beam, chunk=None):
    g = CifGenerator([model], model.decoder.dictionary, beam_size=beam)
    feats = torch.from_numpy(np.ascontiguousarray(_cmvn(fbank(wav)), dtype=np.float32))
    model.encoder.set_chunk(chunk)
    try:
        hyp = g.decode(feats[None], torch.tensor([feats.size(0)])).hypos[0][0]
    finally:
        model.encoder.set_chunk(None)
    d = model.decoder.dictionary
    return [d[t] for t in hyp["tokens"].tolist() if t not in (d.eos(), d.bos(), d.pad())]


def _stream(model, wav, beam, chunk_ms, piece):
    g = CifGenerator([model], model.decoder.dictionary, beam_size=beam)
    s = StreamingRecognizer(model, g, _Units(), _cmvn, chunk_ms=chunk_ms)
    fixed = "".join(s.accept(wav[i:i + piece]) for i in range(0, len(wav), piece))
    partial = s.partial()
    res = s.finish()
    return s, fixed, partial, res


@pytest.mark.parametrize("beam", [1, 3])
def test_chunk_longer_than_the_utterance_equals_offline_decoding(beam):
    m = _model(seed=0)
    wav = _audio(1.3)
    ref = _offline(m, wav, beam)
    assert len(ref) >= 5
    s, fixed, partial, res = _stream(m, wav, beam, float("inf"), 1600)  # 100 ms pieces
    assert res.symbols == ref
    assert res.text == "".join(ref) and fixed == "" and partial == ""  # nothing runs before the end
    assert len(res.token_times) == len(ref) and res.token_times == sorted(res.token_times)
    # the spans of the offline decoding of the raw weights' count (the Recognizer's, token_spans.py)
    g = CifGenerator([m], m.decoder.dictionary, beam_size=beam)
    feats = torch.from_numpy(np.ascontiguousarray(_cmvn(fbank(wav)), dtype=np.float32))
    dec = g.decode(feats[None], torch.tensor([feats.size(0)]))
    n_enc, fires = int(dec.encoder_lengths[0]), dec.hypos[0][0]["fires"]
    want = emitted_token_spans(dec.alpha[0, :n_enc].double().numpy(), len(fires), range(len(ref)),
                               int(m.encoder.downsample), len(wav) / 16000)
    np.testing.assert_allclose(np.array(res.token_spans), np.array(want), atol=1e-4)


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("piece", [1237, 16000])  # samples per accept: not dividing the chunks; 1 s
def test_chunked_stream_equals_masked_offline_decoding(beam, piece):
    """A chunk-trained model: the stream (caches) decodes as the offline masked forward pass, and its
    text is fixed as the audio comes (not all at the end)."""
    m = _model(seed=1, encoder_causal_conv=True, encoder_chunk_size=4, encoder_left_chunks=2)
    wav = _audio(2.0, seed=1)
    ref = _offline(m, wav, beam, chunk=4)
    s, fixed, partial, res = _stream(m, wav, beam, 160, piece)  # 160 ms = 4 frames of 40 ms
    assert res.symbols == ref
    assert len(fixed) > 0 and res.text.startswith(fixed) and partial.startswith(fixed)
    assert len(res.emitted_at) == len(ref)
    # a token is fixed after its fire frame was heard
    fire_ends = [(f + 1) * 0.04 for f in s.fires[: len(ref)]]
    assert all(e + 1e-9 >= fe - 0.04 for e, fe in zip(res.emitted_at, fire_ends))
    assert res.emitted_at[0] < res.duration  # the first tokens came before the end


def test_one_sample_at_a_time():
    m = _model(seed=1, encoder_causal_conv=True, encoder_chunk_size=4)
    wav = _audio(0.7, seed=2)
    ref = _offline(m, wav, 1, chunk=4)
    _, fixed, _, res = _stream(m, wav, 1, 160, 1)
    assert res.symbols == ref and res.text.startswith(fixed)


def test_full_context_model_streams_approximately_and_ends_with_the_tail_rule():
    m = _model(seed=2)
    wav = _audio(1.5, seed=3)
    _, _, _, res = _stream(m, wav, 1, 320, 4000)
    assert len(res.symbols) > 0
    assert chunk_frames(640, 4) == 16
    with pytest.raises(ValueError, match="shorter than one encoder frame"):
        chunk_frames(20, 4)


def test_silence_and_empty_streams():
    m = _model(seed=0)
    with torch.no_grad():
        m.cif.proj.bias.fill_(-30.0)  # the predictor hears nothing: no weight, no token
    wav = np.zeros(32000, dtype=np.float32)
    assert _offline(m, wav, 1) == []
    _, fixed, partial, res = _stream(m, wav, 1, 320, 1600)
    assert (fixed, partial, res.text, res.symbols) == ("", "", "", [])
    g = CifGenerator([m], m.decoder.dictionary, beam_size=2)
    s = StreamingRecognizer(m, g, _Units(), _cmvn)
    assert s.accept(np.zeros(0, dtype=np.float32)) == ""
    assert s.finish().text == ""  # nothing accepted at all


def test_bad_input_is_a_clear_error():
    m = _model(seed=0)
    g = CifGenerator([m], m.decoder.dictionary, beam_size=1)
    with pytest.raises(StreamError, match="16000 Hz"):
        StreamingRecognizer(m, g, _Units(), _cmvn, sample_rate=8000)
    with pytest.raises(StreamError, match="per utterance"):
        StreamingRecognizer(m, g, _Units(), _cmvn, cmvn_kind="utterance")
    s = StreamingRecognizer(m, g, _Units(), _cmvn)
    with pytest.raises(StreamError, match="16000 Hz"):
        s.accept(np.zeros(100, dtype=np.float32), sample_rate=44100)
    with pytest.raises(StreamError, match="int16.*32768"):
        s.accept(np.zeros(100, dtype=np.int16))
    with pytest.raises(StreamError, match="mono"):
        s.accept(np.zeros((100, 2), dtype=np.float32))
    with pytest.raises(StreamError, match="NaN"):
        s.accept(np.full(10, np.nan, dtype=np.float32))
    s.accept(_audio(0.2))
    s.finish()
    with pytest.raises(StreamError, match="after finish"):
        s.accept(_audio(0.1))
    with pytest.raises(StreamError, match="twice"):
        s.finish()


@pytest.mark.parametrize("beam,slack", [(1, 1), (4, 0), (4, 1)])
def test_stream_search_equals_the_generator_whatever_the_arrival(beam, slack):
    """CIF embeddings arriving 2 at a time (and the bound L >= tokens so far) give the generator's
    hypothesis, with --cif-eos-slack too; the fixed prefix only grows and is kept."""
    from fairseq_hkd.generation.stream_search import StreamingSearch

    m = _model(seed=5)
    g = CifGenerator([m], m.decoder.dictionary, beam_size=beam, eos_slack=slack)
    emb = torch.randn(1, 9, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = g.beam_search(emb, torch.tensor([9]))
    eos = m.decoder.dictionary.eos()
    ref_tokens = ref.tokens[0, 0, : int(ref.lengths[0, 0])].tolist()
    ref_tokens = ref_tokens[: ref_tokens.index(eos)] if eos in ref_tokens else ref_tokens
    s = StreamingSearch(g)
    fixed = []
    for i in range(0, 9, 2):
        s.add(emb[0, i:i + 2])
        s.advance(min(i + 2, 9))
        assert s.fixed()[: len(fixed)] == fixed
        fixed = s.fixed()
    assert s.steps == 9 - 1 - slack  # all but the steps where </s> may compete
    assert s.finish(9) == ref_tokens
    assert ref_tokens[: len(fixed)] == fixed


@pytest.mark.parametrize("beam", [1, 4])
def test_stream_search_with_inner_eos_equals_the_generator(beam):
    """A model trained with sentence joins (inner </s> allowed): every step runs as soon as its c_i
    is in, and the stream ends with the generator's hypothesis, sentence boundaries left out."""
    from fairseq_hkd.generation.stream_search import StreamingSearch

    m = _model(seed=5)
    eos = m.decoder.dictionary.eos()
    favour_eos(m, 2.0)
    g = CifGenerator([m], m.decoder.dictionary, beam_size=beam, inner_eos=True)
    emb = torch.randn(1, 9, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = g.beam_search(emb, torch.tensor([9]))
    ref_tokens = ref.tokens[0, 0, : int(ref.lengths[0, 0])].tolist()
    assert eos in ref_tokens[:-1]  # the case is exercised
    s = StreamingSearch(g)
    fixed = []
    for i in range(0, 9, 2):
        s.add(emb[0, i:i + 2])
        s.advance(min(i + 2, 9))
        assert s.steps == min(i + 2, 9)  # no step waits for the end
        assert s.fixed()[: len(fixed)] == fixed and eos not in s.fixed()
        fixed = s.fixed()
    want = [t for t in ref_tokens if t != eos]
    assert s.finish(9) == want
    assert want[: len(fixed)] == fixed
