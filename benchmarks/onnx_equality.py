"""ONNX runtime vs PyTorch on a manifest: transcripts token for token, encoder states, CIF
embeddings, WER of fp32 and int8 exports.

Usage:
    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_equality.py \\
        --path exp/demo-final/hkd/checkpoint_best.pt --manifest data/synth/test.tsv \\
        --fp32 exp/demo-final/hkd/onnx --int8 exp/demo-final/hkd/onnx-int8 --beams 1 5

The model directories come from ``fairseq-hkd-export`` (without and with ``--quantize int8``).
Both sides decode the same utterances in the same batches (``--batch-size``, longest first) from
the same features, as recorded (``--input-level off``, as fairseq-generate; the runtime's front end
is checked against the task's fbank + CMVN). Printed:
per beam, the utterances whose token sequences differ from PyTorch's (fp32 and int8), WER of
each, and over all utterances the largest absolute difference of the encoder states, CIF
weights and CIF embeddings (fp32; compared where both fired the same number of tokens).
"""
import argparse
import json
import sys
import time

import editdistance
import numpy as np
import torch


def wer(refs, hyps) -> float:
    err = sum(editdistance.eval(r.split(), h.split()) for r, h in zip(refs, hyps))
    return 100.0 * err / max(sum(len(r.split()) for r in refs), 1)


def torch_side(path, feats, beams, batch_size, count_search=-1, ctc_weight=0.7):
    """-> ({beam: [token lists]}, [encoder_out], [alpha], [cif embeddings]) in input order."""
    from fairseq import checkpoint_utils

    import fairseq_hkd  # noqa: F401
    from fairseq_hkd.generation.cif_generator import CifGenerator

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([path])
    model = models[0].eval()
    strip = {task.target_dictionary.bos(), task.target_dictionary.pad(), task.target_dictionary.eos()}
    order = sorted(range(len(feats)), key=lambda i: -feats[i].shape[0])
    tokens = {k: [None] * len(feats) for k in beams}
    enc, alpha, emb = [None] * len(feats), [None] * len(feats), [None] * len(feats)
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            lengths = torch.tensor([feats[i].shape[0] for i in idx])
            src = torch.zeros(len(idx), int(lengths.max()), feats[idx[0]].shape[1])
            for b, i in enumerate(idx):
                src[b, : feats[i].shape[0]] = torch.from_numpy(feats[i])
            e = model.forward_encoder(src, lengths)
            a, c = model.forward_cif(e)
            for b, i in enumerate(idx):
                n = int(e["encoder_lengths"][b])
                enc[i], alpha[i] = e["encoder_out"][b, :n].numpy(), a[b, :n].numpy()
                emb[i] = c.embeddings[b, : int(c.lengths[b])].numpy()
            for k in beams:
                gen = CifGenerator([model], task.target_dictionary, beam_size=k, eos_slack=task.cfg.cif_eos_slack,
                                   count_search=count_search, ctc_weight=ctc_weight)
                hypos = gen.decode(src, lengths).hypos
                for b, i in enumerate(idx):
                    tokens[k][i] = [int(t) for t in hypos[b][0]["tokens"] if int(t) not in strip]
    return task, tokens, enc, alpha, emb


def decode_sorted(rec, feats, batch_size, keep_states=False):
    """The runtime on the same batches as :func:`torch_side` (longest first), results in input order."""
    order = sorted(range(len(feats)), key=lambda i: -feats[i].shape[0])
    out = [None] * len(feats)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        for i, dec in zip(idx, rec.decode_features([feats[i] for i in idx], keep_states=keep_states)):
            out[i] = dec
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--path", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--fp32", required=True, help="fp32 model directory")
    p.add_argument("--int8", help="int8 model directory")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-files", type=int)
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--count-search", type=int, default=-1,
                   help="both sides: -1 the raw weights' count (default; the states compared are those of the "
                        "raw weights), or the count search's radius (transcripts compared)")
    p.add_argument("--ctc-weight", type=float, default=0.7)
    a = p.parse_args(argv)

    from fairseq_hkd.data.manifest import read_manifest
    from fairseq_hkd.runtime.recognizer import OnnxRecognizer

    entries = read_manifest(a.manifest)[: a.max_files]
    fp32 = OnnxRecognizer(a.fp32, beam=1, input_level="off", count_search=-1)  # as recorded; raw count: states
    feats = [fp32.frontend.read(e.audio)[0] for e in entries]
    t0 = time.perf_counter()
    task, ref_tokens, ref_enc, ref_alpha, ref_emb = torch_side(a.path, feats, a.beams, a.batch_size,
                                                               a.count_search, a.ctc_weight)
    units = task.units
    from fairseq_hkd.data.audio import read_audio
    from fairseq_hkd.data.cmvn import build_cmvn
    from fairseq_hkd.data.fbank import fbank
    import os
    cmvn = build_cmvn(task.cfg.cmvn, task.cfg.cmvn_stats or os.path.join(task.cfg.data, "cmvn.npz"))
    front = max(float(np.abs(cmvn(fbank(read_audio(e.audio))) - f).max()) for e, f in zip(entries, feats))
    refs = [units.normalise(e.tgt_text) for e in entries]
    sym = task.target_dictionary
    results = {"utterances": len(entries), "manifest": a.manifest, "checkpoint": a.path,
               "frontend_max_abs_diff": front}
    print(f"{len(entries)} utterances; PyTorch decoded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    # 1. states: encoder output, CIF weights and embeddings of the fp32 export
    diffs = {"encoder_out": 0.0, "alpha": 0.0, "cif_embeddings": 0.0}
    same_fires = 0
    for i, dec in enumerate(decode_sorted(fp32, feats, a.batch_size, keep_states=True)):
        diffs["encoder_out"] = max(diffs["encoder_out"], float(np.abs(dec.encoder_out - ref_enc[i]).max()))
        diffs["alpha"] = max(diffs["alpha"], float(np.abs(dec.alpha - ref_alpha[i]).max()))
        if dec.cif_embeddings.shape == ref_emb[i].shape:
            same_fires += 1
            if ref_emb[i].size:
                diffs["cif_embeddings"] = max(diffs["cif_embeddings"],
                                              float(np.abs(dec.cif_embeddings - ref_emb[i]).max()))
    results["max_abs_diff_fp32"] = diffs
    results["same_fire_count_fp32"] = same_fires
    print(f"fp32 states: {json.dumps(diffs)}; same fire count on {same_fires}/{len(feats)}", file=sys.stderr)
    # 2. transcripts per beam and precision
    dirs = {"fp32": a.fp32, **({"int8": a.int8} if a.int8 else {})}
    for k in a.beams:
        torch_text = [units.decode([sym[t] for t in toks]) for toks in ref_tokens[k]]
        row = {"wer_torch": wer(refs, torch_text)}
        for name, d in dirs.items():
            out = decode_sorted(OnnxRecognizer(d, beam=k, count_search=a.count_search, ctc_weight=a.ctc_weight),
                                feats, a.batch_size)
            differ = [entries[i].id for i, dec in enumerate(out) if dec.tokens != ref_tokens[k][i]]
            row[f"wer_{name}"] = wer(refs, [dec.text for dec in out])
            row[f"token_mismatches_{name}"] = len(differ)
            row[f"mismatched_ids_{name}"] = differ[:10]
        results[f"beam{k}"] = row
        print(f"beam {k}: {json.dumps(row)}", file=sys.stderr)
    print(json.dumps(results, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
