"""How often did decoding choose the right number of words? For each fairseq-generate result file, the
% of utterances whose hypothesis (D- line) has as many words as the reference (T- line), and the mean
length difference. With word units this is the count that decoding chose (the count search among the CIF
weights' count +- 1), beside the raw weights' fire count that training validates.

Usage::

    python scripts/hypothesis_length.py exp/d0/cif-s3/decode-heldout/generate-heldout.txt [...]
"""
import argparse
import sys

from fairseq_hkd.generation.significance import read_generate


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="fairseq-generate result files (generate-SPLIT.txt)")
    a = p.parse_args(argv)
    for path in a.files:
        try:
            run = read_generate(path)
        except (OSError, ValueError) as e:  # a missing or foreign file: one line, the others still run
            print(f"{path}: skipped: {e}", file=sys.stderr)
            continue
        diff = (run.hyp_words - run.ref_words).mean()
        print(f"{path}\t{len(run.ids)} utterances\tlength right {run.length_accuracy:.1f} %\t"
              f"mean(hyp - ref words) {diff:+.3f}\tWER {run.wer:.2f}")


if __name__ == "__main__":
    main()
