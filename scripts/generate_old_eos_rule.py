"""fairseq-generate with the CIF search's pre-2026-12-02 </s> rule (</s> could end a hypothesis at
any step): the same generator with an unbounded eos slack. For before/after measurements only.

Usage (the arguments of fairseq-generate)::

    .venv/bin/python scripts/generate_old_eos_rule.py DATA --user-dir fairseq_hkd --task cif_asr ... \
        --path exp/r80/cif/checkpoint_best.pt --gen-subset test --beam 10 --scoring wer

examples/synth/results/ decoded its "-old" files with examples/synth/decode.sh, fairseq-generate
replaced by this script.
"""
import sys

import fairseq_hkd.generation.cif_generator as g

_init = g.CifGenerator.__init__


def _init_old_rule(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.eos_slack = 10**9  # `early` is never true: </s> competes at every step, as before


g.CifGenerator.__init__ = _init_old_rule
from fairseq_cli.generate import cli_main  # noqa: E402

sys.exit(cli_main())
