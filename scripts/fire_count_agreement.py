"""Do several CIF models miscount the same utterances? Each model's fire-count accuracy, how many models
miscount each utterance, and the accuracy of the models' weights averaged frame by frame: a ceiling
for what one more model of the same recipe can be expected to count.

Usage::

    python scripts/fire_count_agreement.py --data data/synth6k-wide --split heldout \\
        --path exp/r2/cif-s{1,2,3}/checkpoint_best.pt exp/r2/hkd-s{1,2,3}/checkpoint_best.pt

The count is the raw weights' (floor of sum(alpha) plus the tail rule at 0.5, as training validates), against
the target length S (units + </s>). If the errors were the same utterances for every model (a property of
the corpus: speech that does not say its transcript's number of units), the averaged weights would count
no better than one model; if they were independent, averaging would remove most of them. The models must
share the encoder's frame rate (the weights are averaged frame by frame).
"""
import argparse
from typing import Dict, List, Sequence

import numpy as np
import torch


def count_agreement(alphas: Sequence[Sequence[np.ndarray]], targets: Sequence[int]) -> Dict[str, np.ndarray]:
    """``alphas[m][u]``: model m's raw weights [T_u] of utterance u; ``targets[u]``: its length S.

    Returns ``correct`` [M, U] (bool: model m counts utterance u right), ``ensemble_correct`` [U] (the
    count of the weights averaged over the models, frame by frame) and ``ensemble_error`` [U]
    (mean weights' sum - S)."""
    from fairseq_hkd.criterions.losses import predicted_token_counts

    def counts(a: np.ndarray) -> int:
        return int(predicted_token_counts(torch.from_numpy(np.asarray(a, dtype=np.float64))[None], 1.0, 0.5)[0])

    target = np.asarray(targets)
    frames = [{len(a[u]) for a in alphas} for u in range(len(target))]
    if any(len(f) != 1 for f in frames):
        raise ValueError("the models give different numbers of encoder frames for an utterance: "
                         "average only models of one frame rate")
    correct = np.array([[counts(a[u]) == target[u] for u in range(len(target))] for a in alphas])
    mean = [np.mean([np.asarray(a[u], dtype=np.float64) for a in alphas], axis=0) for u in range(len(target))]
    return {"correct": correct,
            "ensemble_correct": np.array([counts(m) == t for m, t in zip(mean, target)]),
            "ensemble_error": np.array([m.sum() - t for m, t in zip(mean, target)])}


def model_alphas(path: str, data: str, split: str):
    """One checkpoint's raw weights per utterance: ({id: [T] float64 array}, {id: S}, task)."""
    from fairseq import checkpoint_utils
    import fairseq_hkd  # noqa: F401  (registers the task and model)

    # the model alone: an HKD checkpoint's task would otherwise want a teacher store for every split
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [path], arg_overrides={"data": data, "load_teacher": "no"})
    model = models[0].eval()
    task.load_dataset(split)
    alphas, lengths = {}, {}
    with torch.no_grad():
        for s in task.get_batch_iterator(task.dataset(split), max_tokens=20000).next_epoch_itr(shuffle=False):
            out = model(**s["net_input"], target_lengths=s["target_lengths"])
            for i, a, n, t in zip(s["id"].tolist(), out["alpha"].double(), out["encoder_lengths"].tolist(),
                                  s["target_lengths"].tolist()):
                alphas[i], lengths[i] = a[:n].numpy(), t
    return alphas, lengths, task


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", nargs="+", required=True, help="checkpoints (two or more)")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="heldout")
    p.add_argument("--show", type=float, default=0.5,
                   help="list the utterances miscounted by at least this fraction of the models")
    args = p.parse_args(argv)

    per_model: List[Dict[int, np.ndarray]] = []
    for path in args.path:
        alphas, lengths, task = model_alphas(path, args.data, args.split)
        per_model.append(alphas)
    ids = sorted(lengths)
    r = count_agreement([[a[i] for i in ids] for a in per_model], [lengths[i] for i in ids])
    for path, c in zip(args.path, r["correct"]):
        print(f"{args.split}\t{path}\tfire-count accuracy {100 * c.mean():.1f} %")
    acc = r["correct"].mean(axis=1)
    print(f"{args.split}\t{len(args.path)} models\tmean {100 * acc.mean():.1f} +- {100 * acc.std(ddof=1):.1f} %\t"
          f"weights averaged: {100 * r['ensemble_correct'].mean():.1f} %")
    wrong = (~r["correct"]).sum(axis=0)
    hist = np.bincount(wrong, minlength=len(args.path) + 1)
    print(f"{args.split}\tutterances miscounted by k of the models: " +
          ", ".join(f"k={k}: {n}" for k, n in enumerate(hist) if n))
    entries = task.dataset(args.split).entries
    for u in np.argsort(-wrong, kind="stable"):
        if wrong[u] < args.show * len(args.path):
            break
        print(f"{args.split}\t{entries[ids[u]].id}\tmiscounted by {wrong[u]}\tmean weights' sum - S "
              f"{r['ensemble_error'][u]:+.2f}\t{entries[ids[u]].tgt_text}")


if __name__ == "__main__":
    main()
