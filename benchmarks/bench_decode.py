"""CPU real-time factor of CIF decoding (beam 1 and beam 10) for cif_tiny and cif_conformer_paper.

Usage:
    .venv/bin/python benchmarks/bench_decode.py                      # one thread, both models
    .venv/bin/python benchmarks/bench_decode.py --threads 2 --batch 16 --seconds 4.5 --repeats 5
    .venv/bin/python benchmarks/bench_decode.py --archs cif_tiny --device cuda

Random weights (timing does not depend on them), with two adjustments so the search does what a
trained model makes it do: the CIF weight predictor's bias is set so the model fires at a
realistic rate (``--token-rate`` units/s, default: 3.2 chars/s for the AISHELL-sized paper model,
12 chars/s for English characters with cif_tiny), and the decoder's </s> logit is pushed to -1e4
(a forward hook) so that random logits do not end hypotheses early: every utterance is searched
for all its steps, as with a trained model.
Inputs are random 80-dim features of ``--seconds`` seconds (10 ms frames), ``--batch`` at a time.

Printed per model and beam: real-time factor (decode time / audio time) of the whole decode
(encoder + CIF + search), the share of it spent in the search, decoder steps (= CIF fires) per
utterance, and the speed-up of batched decoding over decoding the same utterances one by one.
Timings are medians over ``--repeats`` runs, batched and one-by-one interleaved.
``--count-search=-1,1`` also times the count search (three candidate counts, CTC scoring) and
prints its RTF relative to the raw count's in the same run.
"""
import argparse
import math
import statistics
import time

import torch
from fairseq.data import Dictionary

from fairseq_hkd.generation.cif_generator import CifGenerator
from fairseq_hkd.models.cif_model import ARCHITECTURES, CifModel, CifModelConfig

DEFAULT_VOCAB = {"cif_tiny": 32, "cif_conformer_paper": 4234}
DEFAULT_RATE = {"cif_tiny": 12.0, "cif_conformer_paper": 3.2}


class _Task:
    def __init__(self, dictionary):
        self.target_dictionary = dictionary


def build_model(arch: str, vocab: int, token_rate: float) -> CifModel:
    d = Dictionary()
    for i in range(vocab - len(d)):
        d.add_symbol(f"u{i}")
    cfg = CifModelConfig(**ARCHITECTURES[arch])
    torch.manual_seed(0)
    model = CifModel.build_model(cfg, _Task(d)).eval()
    frame_s = 0.01 * model.encoder.downsample
    p = min(max(token_rate * frame_s, 1e-3), 0.95)
    with torch.no_grad():
        model.cif.proj.weight.mul_(0.01)
        model.cif.proj.bias.fill_(math.log(p / (1 - p)))
    eos = d.eos()

    def no_eos(module, inputs, logits):
        return logits.index_fill(-1, torch.tensor([eos], device=logits.device), -1e4)

    model.decoder.output_projection.register_forward_hook(no_eos)
    return model


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out



def bench(arch, args):
    vocab = args.vocab or DEFAULT_VOCAB[arch]
    rate = args.token_rate or DEFAULT_RATE[arch]
    model = build_model(arch, vocab, rate).to(args.device)
    d = model.decoder.dictionary
    frames = int(args.seconds * 100)
    g = torch.Generator().manual_seed(1)
    src = torch.randn(args.batch, frames, 80, generator=g).to(args.device)
    # lengths from 70% to 100% of the longest, like a length-sorted batch
    lengths = torch.linspace(frames * 0.7, frames, args.batch).round().long().to(args.device)
    audio_s = float(lengths.sum()) / 100
    rows = []
    with torch.inference_mode():
        def encode():
            return model.forward_cif(model.forward_encoder(src, lengths))

        _, cif = encode()  # warm-up
        for beam, radius in [(b, r) for b in args.beams for r in args.count_search]:
            gen = CifGenerator([model], d, beam_size=beam, count_search=radius, ctc_weight=0.7)
            gen.decode(src[:1], lengths[:1])  # warm-up
            batched, one, enc = [], [], []
            for _ in range(args.repeats):  # interleaved
                t, _ = timed(encode, 1)
                enc.append(t)
                t, _ = timed(lambda: gen.decode(src, lengths), 1)
                batched.append(t)
                t, _ = timed(lambda: [gen.decode(src[b:b + 1, : int(lengths[b])], lengths[b:b + 1])
                                      for b in range(args.batch)], 1)
                one.append(t)
            t_b, t_1, t_e = statistics.median(batched), statistics.median(one), statistics.median(enc)
            rows.append((arch, beam, radius, t_b / audio_s, max(t_b - t_e, 0.0) / t_b,
                         float(cif.lengths.float().mean()), t_1 / t_b))
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    return rows, n_params, audio_s


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", default="cif_tiny,cif_conformer_paper")
    p.add_argument("--beams", default="1,10")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0, help="longest utterance of the batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vocab", type=int, help="vocabulary size (default per model: 32 / 4234)")
    p.add_argument("--token-rate", type=float, help="CIF fires per second (default per model: 12 / 3.2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--count-search", default="-1",
                   help="comma-separated --cif-count-search radii to time (-1: the raw count; 1: the default "
                        "L-1..L+1 with CTC weight 0.7)")
    args = p.parse_args()
    args.beams = [int(b) for b in args.beams.split(",")]
    args.count_search = [int(r) for r in args.count_search.split(",")]
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, {args.threads} thread(s), batch {args.batch}, utterances "
          f"{0.7 * args.seconds:.1f}-{args.seconds:.1f} s, median of {args.repeats}")
    print(f"{'model':<22}{'params':>8}{'beam':>6}{'count R':>8}{'RTF':>9}{'x R=-1':>8}{'search':>9}{'steps/utt':>11}"
          f"{'batch x':>9}")
    for arch in args.archs.split(","):
        rows, n_params, _ = bench(arch, args)
        raw = {beam: rtf for _, beam, radius, rtf, *_ in rows if radius == -1}
        for arch_, beam, radius, rtf, search, steps, speedup in rows:
            ratio = f"{rtf / raw[beam]:>7.2f}x" if beam in raw else f"{'-':>8}"
            print(f"{arch_:<22}{n_params:>7.1f}M{beam:>6}{radius:>8}{rtf:>9.4f}{ratio}{100 * search:>8.0f}%{steps:>11.1f}"
                  f"{speedup:>8.1f}x")
    print("RTF: decode seconds per audio second (lower is faster); search: share of the decode after the "
          "encoder and CIF; x R=-1: RTF against the raw count's (same beam, same run); batch x: one-by-one time / "
          "batched time for the same utterances")


if __name__ == "__main__":
    main()
