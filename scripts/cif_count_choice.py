"""How should decoding choose the CIF count? A grid over ``--cif-count-search`` and ``--cif-ctc-weight``
from one decoding pass per candidate count, for choosing the defaults on a development split.

Usage::

    python scripts/cif_count_choice.py --data data/synth --split heldout --beam 5 \\
        --path exp/abl4000/cif-s1/checkpoint_best.pt exp/abl4000/cif-s2/checkpoint_best.pt

For every utterance and every candidate count n = L + d, |d| <= --radius (L: the raw weights' count,
fires + tail rule), the weights are scaled to n (``forward_cif(target_lengths=n)``, as
``CifGenerator.search_candidates``, the candidates of the default decoding) and searched; the best hypothesis's
decoder score and CTC log-likelihood are kept. Then, per model and averaged over the models, the
word error rate of:

- ``raw``: the raw weights (``--cif-count-search -1``; decoded separately),
- ``R=0``: the weights scaled to L,
- ``R=r, W=w``: the candidate with the best ``w * CTC + (1 - w) * decoder score`` among |d| <= r,
- two oracles (not decodings): the target's count S when |S - L| <= radius, and the best candidate
  by its own WER: how much a perfect count choice could give.

Also the count accuracy (L == S) and the chosen hypotheses' length accuracy. WER is on words
(the units joined as the task's ``UnitsDecoder`` prints them), as fairseq-generate's scorer.
"""
import argparse
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F


def decode_candidates(path: str, data: str, split: str, beam: int, radius: int) -> List[Dict]:
    """-> one dict per utterance: S, L, the reference words and per candidate (and "raw") the
    hypothesis words, decoder score, CTC log-likelihood and token count."""
    import editdistance
    from fairseq import checkpoint_utils

    import fairseq_hkd  # noqa: F401  (registers the task and model)
    from fairseq_hkd.generation.cif_generator import CifGenerator, CifSearchResult

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [path], arg_overrides={"data": data, "load_teacher": "no"})  # the model alone, also for HKD checkpoints
    model = models[0].eval()
    d = task.target_dictionary
    gen = CifGenerator([model], d, beam_size=beam, count_search=radius)
    units = task.build_bpe(None)
    task.load_dataset(split)

    def words(tokens):
        return units.decode(d.string(tokens, extra_symbols_to_ignore={d.eos(), d.bos()})).split()

    rows = []
    with torch.no_grad():
        for s in task.get_batch_iterator(task.dataset(split), max_tokens=20000).next_epoch_itr(shuffle=False):
            src, src_len = s["net_input"]["src_tokens"], s["net_input"]["src_lengths"]
            enc = model.forward_encoder(src, src_len)
            _, raw = model.forward_cif(enc)
            bsz = src.size(0)
            cands, _ = gen.search_candidates(enc, raw.lengths)  # rows (delta + radius) * B + b
            runs = {"raw": gen.search(raw.embeddings, raw.lengths)}
            for i, delta in enumerate(range(-radius, radius + 1)):
                part = slice(i * bsz, (i + 1) * bsz)
                runs[delta] = CifSearchResult(cands.tokens[part], cands.lengths[part], cands.scores[part],
                                              cands.positional_scores[part])
            ctc = {k: gen.ctc_scores(enc, r.tokens[:, 0], r.lengths[:, 0], 1) for k, r in runs.items()}
            for b in range(src.size(0)):
                ref = words(s["target"][b][: s["target_lengths"][b]])
                row = {"S": int(s["target_lengths"][b]), "L": int(raw.lengths[b]), "ref_words": len(ref), "cand": {}}
                for k, r in runs.items():
                    n = int(r.lengths[b, 0])
                    hyp = words(r.tokens[b, 0, :n])
                    row["cand"][k] = {"err": editdistance.eval(ref, hyp), "att": float(r.scores[b, 0]),
                                      "ctc": float(ctc[k][b]), "n": n}
                rows.append(row)
    return rows


def wer(rows, pick) -> float:
    return 100.0 * sum(r["cand"][pick(r)]["err"] for r in rows) / sum(r["ref_words"] for r in rows)


def chooser(radius: int, weight: float):
    def pick(r):
        return max(range(-radius, radius + 1),
                   key=lambda k: weight * r["cand"][k]["ctc"] + (1 - weight) * r["cand"][k]["att"])
    return pick


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", nargs="+", required=True, help="checkpoints (one row each, then the mean)")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="heldout", help="a development split (never choose on test)")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--radius", type=int, default=2, help="largest --cif-count-search in the grid")
    p.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.3, 0.5, 0.7, 1.0])
    args = p.parse_args()
    torch.set_num_threads(1)

    settings = [("raw", lambda r: "raw"), ("R=0", lambda r: 0)]
    settings += [(f"R={k} W={w:g}", chooser(k, w)) for k in range(1, args.radius + 1) for w in args.weights]
    oracle = [("oracle S", lambda r: max(-args.radius, min(args.radius, r["S"] - r["L"]))),
              (f"oracle best |d|<={args.radius}",
               lambda r: min(range(-args.radius, args.radius + 1), key=lambda k: r["cand"][k]["err"]))]
    table = {}
    for path in args.path:
        rows = decode_candidates(path, args.data, args.split, args.beam, args.radius)
        count_acc = 100.0 * np.mean([r["L"] == r["S"] for r in rows])
        print(f"# {path}: {len(rows)} utterances of {args.split}, count accuracy (L == S) {count_acc:.1f} %")
        for name, pick in settings + oracle:
            length_acc = 100.0 * np.mean([r["cand"][pick(r)]["n"] == r["S"] for r in rows])
            table.setdefault(name, []).append((wer(rows, pick), length_acc))
            print(f"{name}\tWER {table[name][-1][0]:.2f}\tlength accuracy {length_acc:.1f} %")
    print(f"# mean over {len(args.path)} model(s): WER, length accuracy")
    for name, values in table.items():
        print(f"{name}\t{np.mean([v[0] for v in values]):.2f}\t{np.mean([v[1] for v in values]):.1f} %")


if __name__ == "__main__":
    main()
