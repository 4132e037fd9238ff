"""Greedy / beam search over CIF tokens that arrive one chunk at a time (one utterance).

Shapes: K beam size, n tokens so far, C CIF channels, V vocabulary.

The rules are :class:`~fairseq_hkd.generation.cif_generator.CifGenerator`'s, step for step (same
decoder calls, same masks, same top-k), so a stream gives the generator's hypothesis for the same
CIF embeddings. What streaming adds is *when* a step may run: step i reads c_i and must know
whether ``</s>`` competes there, i.e. whether i >= L - 1 - eos_slack, with L the final number of CIF
tokens. L is known only at the end, but a lower bound is known as tokens fire: L >= fired + 1 once
the leftover weight has reached the tail threshold (the tail rule will emit one more token even if
nothing else fires). Steps below that bound minus 1 + eos_slack run as soon as the bound allows;
the rest run at :meth:`StreamingSearch.finish`. So the text lags the fires by at most one token
(half a token's weight when the speech goes on).

Fixed text: greedy: every step run so far; beam: the longest prefix shared by all K hypotheses (no
later step can change it).

With the generator's ``inner_eos`` (a model trained with sentence joins) ``</s>`` competes at every
step and ends nothing before the last one, so each step runs as soon as its c_i is in; inner ``</s>``
(sentence boundaries) are left out of the returned tokens.
"""
from typing import Dict, List, Optional

import torch
from torch import Tensor

__all__ = ["StreamingSearch"]


class StreamingSearch:
    """Search state of one stream. ``generator``: the :class:`CifGenerator` whose settings (beam,
    eos_slack, model) to follow; language-model fusion is not supported in streaming yet."""

    def __init__(self, generator):
        if generator.lm is not None:
            raise NotImplementedError("streaming recognition does not support language-model fusion yet")
        self.g = generator
        self.decoder = generator.model.decoder
        self.K = generator.beam_size if generator.autoregressive else 1
        self.emb: Optional[Tensor] = None  # [K, n, C]
        self.steps = 0  # decoder steps run
        self.incremental_state: Dict[str, Dict[str, Optional[Tensor]]] = {}
        self.tokens: Optional[Tensor] = None  # [K, 1 + steps]: </s>, then one token per step
        self.scores: Optional[Tensor] = None  # [K]
        self.finished: Optional[Tensor] = None  # [K] bool
        self.done: Optional[List[int]] = None  # the final hypothesis (without </s>) after finish

    @property
    def n_tokens(self) -> int:
        return 0 if self.emb is None else self.emb.size(1)

    def add(self, embeddings: Tensor) -> None:
        """Append newly completed CIF embeddings [m, C]."""
        if embeddings.size(0) == 0:
            return
        e = embeddings[None].expand(self.K, -1, -1)
        self.emb = e.clone() if self.emb is None else torch.cat([self.emb, e], dim=1)

    @torch.no_grad()
    def advance(self, min_tokens: int) -> None:
        """Run every step that is certainly not one where ``</s>`` competes, given L >= ``min_tokens``."""
        if not self.g.autoregressive:
            return  # the NAR decoder attends to all tokens: decoded at finish
        limit = self.n_tokens if self.g.inner_eos else min(min_tokens - 1 - self.g.eos_slack, self.n_tokens)
        while self.steps < limit:
            self._step(last_len=None)

    def _start(self, device) -> None:
        K = self.K
        self.tokens = torch.full((K, 1), self.g.eos, dtype=torch.long, device=device)
        self.scores = torch.full((K,), float("-inf"), device=device)
        self.scores[0] = 0.0  # only beam 0 is live at the start, as in the generator
        self.finished = torch.zeros(K, dtype=torch.bool, device=device)

    def _step(self, last_len: Optional[int]) -> None:
        """One decoder step for all K rows; ``last_len`` = L when known (the end-of-stream rules)."""
        g, K, V, step = self.g, self.K, self.g.vocab_size, self.steps
        if self.tokens is None:
            self._start(self.emb.device)
        n = self.emb.size(1)
        pad_mask = torch.zeros(K, step + 1, dtype=torch.bool, device=self.emb.device)
        logits, _ = self.decoder(self.tokens, self.emb[:, : step + 1], pad_mask,
                                 incremental_state=self.incremental_state)
        lprobs = g._lprobs(logits[:, -1, :])
        row_len = n if last_len is None else last_len
        if not g.inner_eos and (last_len is None or row_len - 1 - g.eos_slack > step):  # </s> not allowed yet
            lprobs[:, g.eos] = float("-inf")
        stay = torch.full((V,), float("-inf"), device=lprobs.device)
        stay[g.pad] = 0.0
        lprobs = torch.where(self.finished[:, None], stay[None, :], lprobs)
        cand = (self.scores[:, None] + lprobs).view(1, K * V)
        top_scores, top_idx = cand.topk(K, dim=1)
        order = torch.div(top_idx, V, rounding_mode="floor").view(-1)
        new_tok = (top_idx % V).view(-1)
        if K > 1:
            self.tokens, self.finished = self.tokens[order], self.finished[order]
            g._reorder(self.decoder, self.incremental_state, order)
        self.tokens = torch.cat([self.tokens, new_tok[:, None]], dim=1)
        self.scores = top_scores.view(-1)
        if last_len is not None:
            ends = (new_tok == g.eos) & (not g.inner_eos)  # an inner </s> is a sentence boundary
            self.finished = self.finished | ends | (last_len == step + 1)
        self.steps += 1

    def fixed(self) -> List[int]:
        """Tokens no later step can change (without the start symbol)."""
        if self.done is not None:
            return self.done
        if self.tokens is None:
            return []
        t = self.tokens[:, 1:]
        same = (t == t[:1]).all(dim=0)
        n = int(same.long().cumprod(0).sum()) if same.numel() else 0
        return self._emitted(t[0, :n].tolist())

    def best(self) -> List[int]:
        """The best hypothesis so far (without the start symbol)."""
        if self.done is not None:
            return self.done
        if self.tokens is None:
            return []
        return self._emitted(self.tokens[int(self.scores.argmax()), 1:].tolist())

    def _emitted(self, tokens: List[int]) -> List[int]:
        """Tokens without inner </s> (sentence boundaries; only with the generator's inner_eos)."""
        return [t for t in tokens if t != self.g.eos] if self.g.inner_eos else tokens

    @torch.no_grad()
    def finish(self, total: int) -> List[int]:
        """All ``total`` = L CIF tokens are in: run the remaining steps under the generator's end rules
        and return the best hypothesis (tokens before its ``</s>``)."""
        assert total == self.n_tokens, (total, self.n_tokens)
        g = self.g
        if total == 0:
            self.done = []
            return self.done
        if not g.autoregressive:
            res = g.nar_argmax(self.emb[:1], torch.tensor([total], device=self.emb.device))
            tok = res.tokens[0, 0, : int(res.lengths[0, 0])].tolist()
        else:
            if self.tokens is None:
                self._start(self.emb.device)
            while self.steps < total and not bool(self.finished.all()):
                self._step(last_len=total)
            tok = self.tokens[int(self.scores.topk(1).indices[0]), 1:].tolist()  # the generator's nbest rule
        out = []
        for t in tok:
            if t == g.eos and g.inner_eos:
                continue  # a sentence boundary
            if t == g.eos:
                break
            if t != g.pad:
                out.append(t)
        self.done = out
        return out
