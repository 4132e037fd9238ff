"""Chunk-by-chunk inference through the conformer encoder and the CIF weight predictor, with caches.

Shapes: t new fbank frames [t, F]; D model size; one stream (batch 1); all in eval mode.

    fbank frames --EncoderStream--> encoder frames h [t', D] --WeightStream--> (alpha [t''], h [t'', D])

:class:`EncoderStream` carries, from chunk to chunk:

* the subsampler's remainder: per stride-2 conv2d layer, the input frames its next output still
  reads (a kernel-3, stride-2, padding-1 conv's output t reads frames 2t-1, 2t, 2t+1), so the
  subsampled frames equal the whole-utterance ones; at the end one zero frame stands for the
  right padding, giving exactly ceil(L / 2) frames per layer;
* per conformer layer, the keys and values of the left context (``left_chunks`` chunks at that
  layer's frame rate; all frames when < 0) and the depthwise convolution's last input frames;
* the subsampled frames that do not fill a chunk yet (a chunk is ``chunk`` output frames, 2x as many
  before each max-pooling).

With a chunk-trained encoder (chunk masks, causal convolution) the frames equal those of the masked
whole-utterance forward pass with the same chunk and left context (up to float rounding: the
convolutions run on other lengths); with a full-context encoder they are an approximation (the
attention and a non-causal convolution lose their right context at chunk ends). A stream that ends
before its first chunk is complete is encoded by the whole-utterance forward pass itself, so a
chunk longer than the utterance gives exactly the offline frames.

:class:`WeightStream` applies the CIF weight predictor (a conv1d with k // 2 frames of look-ahead:
each frame's weight waits for the next k // 2 frames, or the end of the stream).
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fairseq_hkd.models.chunk_attention import rel_pos_slice

__all__ = ["EncoderStream", "WeightStream"]


class EncoderStream:
    """Feed fbank frames to a :class:`ConformerEncoder` chunk by chunk.

    Args:
        encoder: the model's encoder (eval mode).
        chunk: output (encoder) frames per chunk, >= 1.
        left_chunks: chunks of cached left context per layer (None: the encoder's ``left_chunks``).
    """

    def __init__(self, encoder, chunk: int, left_chunks: Optional[int] = None):
        if chunk < 1:
            raise ValueError(f"the streaming chunk must be >= 1 encoder frame, got {chunk}")
        self.encoder = encoder
        self.chunk = int(chunk)
        left = encoder.left_chunks if left_chunks is None else int(left_chunks)
        pools = len(encoder.pool_after)
        self.sub_chunk = self.chunk * 2 ** pools  # subsampled frames per chunk
        # per layer: frames of keys/values kept for the next chunk, at that layer's frame rate
        self.max_left: List[int] = []
        for i in range(1, len(encoder.layers) + 1):
            self.max_left.append(-1 if left < 0 else left * self.chunk * 2 ** pools)
            if i in encoder.pool_after:
                pools -= 1
        self.caches: List[Dict[str, Tensor]] = [{} for _ in encoder.layers]
        self.conv_bufs: List[Optional[Tensor]] = [None] * len(encoder.subsample.convs)
        self.pending: Optional[Tensor] = None  # [n, 1, D] subsampled frames waiting for a full chunk
        self.feats: List[Tensor] = []  # fbank frames kept until the first chunk is run
        self.n_feats = 0
        self.started = False
        self.finished = False

    # ------------------------------------------------------------------ subsampling
    def _ready_subsampled(self, n_feats: int) -> int:
        """Subsampled frames computable from ``n_feats`` fbank frames before the end (n // 2 per layer)."""
        for _ in self.encoder.subsample.convs:
            n_feats //= 2
        return n_feats

    def _subsample(self, feats: Tensor, final: bool) -> Tensor:
        """New fbank frames [t, F] -> newly complete subsampled frames [t', 1, D] (input scale applied)."""
        sub = self.encoder.subsample
        y = feats[None, None]  # [1, 1, t, F]
        for i, conv in enumerate(sub.convs):
            buf = self.conv_bufs[i]
            if buf is None:  # the left padding frame
                buf = y.new_zeros(1, y.size(1), 1, y.size(3))
            buf = torch.cat([buf, y], dim=2)
            if final:  # the right padding frame
                buf = torch.cat([buf, buf.new_zeros(1, buf.size(1), 1, buf.size(3))], dim=2)
            n = buf.size(2)
            m = (n - 3) // 2 + 1 if n >= 3 else 0
            if m > 0:
                y = torch.relu(F.conv2d(buf[:, :, : 2 * m + 1], conv.weight, conv.bias, stride=2, padding=(0, 1)))
            else:
                y = buf.new_zeros(1, conv.out_channels, 0, (buf.size(3) + 1) // 2)
            self.conv_bufs[i] = buf[:, :, 2 * m:]
        b, c, t, f = y.shape
        x = sub.out(y.permute(2, 0, 1, 3).reshape(t, b, c * f))
        return x * self.encoder.input_scale if self.encoder.input_scale != 1.0 else x

    # ------------------------------------------------------------------ conformer layers
    def _run_chunk(self, x: Tensor) -> Tensor:
        """Subsampled frames [t, 1, D] (one chunk, or the last partial one) -> encoder frames [t', D]."""
        enc = self.encoder
        for i, (layer, cache) in enumerate(zip(enc.layers, self.caches), start=1):
            t = x.size(0)
            left = cache["k"].size(2) if "k" in cache else 0
            pos = rel_pos_slice(enc.embed_positions, t, left + t)
            x, self.caches[i - 1] = layer.forward_chunk(x, pos, cache, self.max_left[i - 1])
            if i in enc.pool_after:
                x = enc.pool(x.permute(1, 2, 0)).permute(2, 0, 1)
        return x[:, 0]

    def _drain(self, final: bool) -> Tensor:
        out = []
        while self.pending is not None and (self.pending.size(0) >= self.sub_chunk
                                            or (final and self.pending.size(0) > 0)):
            x, self.pending = self.pending[: self.sub_chunk], self.pending[self.sub_chunk:]
            out.append(self._run_chunk(x))
        return torch.cat(out) if out else self._empty()

    def _empty(self) -> Tensor:
        p = next(self.encoder.parameters())
        return p.new_zeros(0, self.encoder.embed_dim)

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def accept(self, feats: Tensor) -> Tensor:
        """fbank frames [t, F] (normalised as in training) -> encoder frames [t', D] completed by them."""
        if self.finished:
            raise RuntimeError("EncoderStream.accept after finish")
        if feats.dim() != 2:
            raise ValueError(f"expected fbank frames [t, F], got shape {tuple(feats.shape)}")
        if not self.started:
            self.feats.append(feats)
            self.n_feats += feats.size(0)
            if self._ready_subsampled(self.n_feats) < self.sub_chunk:
                return self._empty()
            self.started = True
            feats, self.feats = torch.cat(self.feats), []
        x = self._subsample(feats, final=False)
        self.pending = x if self.pending is None else torch.cat([self.pending, x])
        return self._drain(final=False)

    @torch.no_grad()
    def finish(self) -> Tensor:
        """End of stream -> the remaining encoder frames [t', D]."""
        if self.finished:
            raise RuntimeError("EncoderStream.finish called twice")
        self.finished = True
        if not self.started:  # one chunk at most: the whole-utterance forward pass, exactly
            if self.n_feats == 0:
                return self._empty()
            feats = torch.cat(self.feats)
            self.feats = []
            out = self.encoder(feats[None], torch.tensor([feats.size(0)], device=feats.device))
            return out["encoder_out"][0]
        x = self._subsample(self._empty_feats(), final=True)
        self.pending = x if self.pending is None else torch.cat([self.pending, x])
        return self._drain(final=True)

    def _empty_feats(self) -> Tensor:
        buf = self.conv_bufs[0]  # [1, 1, n, F]: set by the first _subsample
        return buf.new_zeros(0, buf.size(3))


class WeightStream:
    """The CIF weight predictor over a stream of encoder frames.

    ``step(h, final)`` -> (alpha [m] float32, h [m, D]) for the frames whose weight is now known
    (all but the last k // 2 unless ``final``), in order. A stream handed over in one final step
    gets exactly ``CifMiddleware.predict_alpha`` of the whole sequence.
    """

    def __init__(self, cif):
        self.cif = cif
        self.half = cif.conv.kernel_size[0] // 2
        self.buf: Optional[Tensor] = None  # [n, D]: left context, then frames waiting for look-ahead
        self.n_ctx = 0

    @torch.no_grad()
    def step(self, h: Tensor, final: bool = False) -> Tuple[Tensor, Tensor]:
        z = (h if self.buf is None else torch.cat([self.buf, h])).float()
        if z.size(0) == 0:
            return z.new_zeros(0), z
        with torch.autocast(z.device.type, enabled=False):
            a = self.cif.predict_alpha(z[None], None)[0]  # conv1d zero-padded by k // 2 on both sides
        lo = self.n_ctx
        hi = z.size(0) if final else max(z.size(0) - self.half, lo)
        start = max(hi - self.half, 0)
        self.buf, self.n_ctx = z[start:], hi - start
        return a[lo:hi], z[lo:hi]
