"""Is a CIF model's token count off by a bias or by noise? Fire-count accuracy with the weights scaled.

Usage::

    python scripts/fire_count_calibration.py --path exp/synth/cif/checkpoint_best.pt --data data/synth \\
        --splits heldout test --scales 1.0 1.02 1.04 1.06

For each split and scale c: the fraction of utterances whose inference token count (floor of
c * sum(alpha) plus the tail rule at 0.5) equals the target length S (units + </s>), and the mean of
c * sum(alpha) - S. If some c != 1 raised the accuracy a lot, the count error would be a bias a
calibration (or a stronger quantity loss) could remove; if c = 1 is best, the error is spread
around the target and only a better encoder / weight predictor helps.

Then, at scale 1, where the count error comes from: its correlation with the utterance's speech
rate (target tokens per second of audio; strongly negative = fast speech under-counted, slow
speech over-counted: the weights follow duration more than content), the least-squares fit
sum(alpha) ~ a S + b frames + c (b > 0: part of the count comes from the number of encoder frames),
the accuracy per rate tercile,
and the count accuracy of the CTC head's greedy output (collapsed non-blank tokens + </s>) on the
same utterances: if CTC counts no better than CIF, the encoder, not the weight predictor, is short.
Last, where in the utterance the count goes wrong: the weights up to the speech offset (the file's last
4-ms sub-frame within 40 dB of its loudest, the segmenter's rule ``segments.speech_extent``; encoder frames of
``downsample`` x 10 ms) against the words, and those after it (the trailing silence) against the one
``</s>``.
"""
import argparse

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--splits", nargs="+", default=["heldout"])
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 1.02, 1.04, 1.06, 1.08])
    args = p.parse_args()

    from fairseq import checkpoint_utils
    import fairseq_hkd  # noqa: F401  (registers the task and model)
    from fairseq_hkd.criterions.losses import predicted_token_counts

    # the model alone: an HKD checkpoint's task would otherwise want a teacher store for every split
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [args.path], arg_overrides={"data": args.data, "load_teacher": "no"})
    model = models[0].eval()
    for split in args.splits:
        task.load_dataset(split)
        alphas, lengths, seconds, ctc_counts, frames, ids = [], [], [], [], [], []
        blank = task.target_dictionary.bos()  # the CTC blank (criterions/cif.py)
        with torch.no_grad():
            for s in task.get_batch_iterator(task.dataset(split), max_tokens=20000).next_epoch_itr(shuffle=False):
                out = model(**s["net_input"], target_lengths=s["target_lengths"])
                alphas.append(out["alpha"].double())
                lengths.append(s["target_lengths"])
                seconds.append(s["net_input"]["src_lengths"].double() / 100.0)  # 10 ms fbank frames
                frames.append(out["encoder_lengths"].double())
                ids += s["id"].tolist()
                ctc_counts.append(torch.tensor([ctc_greedy_count(lp[:n], blank) + 1 for lp, n in
                                                zip(out["ctc_logits"], out["encoder_lengths"].tolist())]))
        for c in args.scales:
            acc = np.concatenate([(predicted_token_counts(a * c, 1.0, 0.5) == t).numpy() for a, t in zip(alphas, lengths)])
            diff = np.concatenate([(a.sum(1) * c - t).numpy() for a, t in zip(alphas, lengths)])
            print(f"{split}\tscale {c:.2f}\tfire-count accuracy {100 * acc.mean():.1f} %\t"
                  f"mean(c*sum(alpha) - S) {diff.mean():+.3f}\tmean |.| {np.abs(diff).mean():.3f}")
        target = torch.cat(lengths).double().numpy()
        err = torch.cat([a.sum(1) for a in alphas]).numpy() - target
        rate = target / torch.cat(seconds).numpy()
        correct = np.concatenate([(predicted_token_counts(a, 1.0, 0.5) == t).numpy() for a, t in zip(alphas, lengths)])
        print(f"{split}\tcorr(sum(alpha) - S, tokens per second) {np.corrcoef(err, rate)[0, 1]:+.2f}")
        # how much of the count comes from duration: least squares sum(alpha) ~ a S + b frames + c
        design = np.stack([target, torch.cat(frames).numpy(), np.ones_like(target)], axis=1)
        total = target + err
        coef = np.linalg.lstsq(design, total, rcond=None)[0]
        resid = total - design @ coef
        print(f"{split}\tsum(alpha) ~ {coef[0]:.3f} S + {coef[1]:.4f} frames {coef[2]:+.3f} (least squares); "
              f"|residual| < 0.5 for {100 * np.mean(np.abs(resid) < 0.5):.1f} %")
        for name, k in zip(("slow", "middle", "fast"), np.array_split(np.argsort(rate), 3)):
            if k.size == 0:  # fewer than three utterances
                continue
            print(f"{split}\t{name} third ({rate[k].min():.2f}-{rate[k].max():.2f} tokens/s)\tfire-count accuracy "
                  f"{100 * correct[k].mean():.1f} %\tmean(sum(alpha) - S) {err[k].mean():+.3f}")
        ctc = torch.cat(ctc_counts).numpy()
        print(f"{split}\tCTC greedy count accuracy {100 * np.mean(ctc == target):.1f} % (CIF: {100 * correct.mean():.1f} %)")
        speech_and_tail(task, split, ids, [a for b in alphas for a in b], [n for f in frames for n in f.long().tolist()],
                        target, int(model.encoder.downsample))


def speech_and_tail(task, split, ids, alphas, frames, target, downsample) -> None:
    """The count error split at the speech offset: words (S - 1) against the weights before it, the
    </s> against those after it."""
    import os

    from fairseq_hkd.data.audio import read_audio
    from fairseq_hkd.data.manifest import read_manifest
    from fairseq_hkd.generation.segments import SegmenterConfig, speech_extent

    entries = read_manifest(os.path.join(task.cfg.data, f"{split}.tsv"))
    speech, tail = [], []
    for i, a, n in zip(ids, alphas, frames):
        x = read_audio(entries[i].audio)
        offset = (speech_extent(x, SegmenterConfig()) or (0, x.shape[0]))[1] / 16000  # the whole file in noise
        k = int(np.ceil(offset / (downsample * 0.01)))  # the first encoder frame after the speech offset
        speech.append(float(a[:k].sum()))
        tail.append(float(a[k:n].sum()))
    speech, tail = np.array(speech), np.array(tail)
    words = target - 1
    print(f"{split}\tweights before the speech offset - words: mean {np.mean(speech - words):+.3f} sd "
          f"{np.std(speech - words):.3f}, |.| < 0.5 for {100 * np.mean(np.abs(speech - words) < 0.5):.1f} %; "
          f"after it - 1 (</s>): mean {np.mean(tail - 1):+.3f} sd {np.std(tail - 1):.3f}")


def ctc_greedy_count(logits: torch.Tensor, blank: int) -> int:
    """[T, V] CTC logits -> number of tokens of the greedy CTC output (repeats collapsed, blanks out)."""
    best = logits.argmax(dim=-1)
    keep = torch.ones_like(best, dtype=torch.bool)
    keep[1:] = best[1:] != best[:-1]
    return int((keep & (best != blank)).sum())


if __name__ == "__main__":
    main()
