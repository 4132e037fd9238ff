"""fairseq-hkd: CIF speech recognition with hierarchical knowledge distillation (fairseq plugin).

Importing this package registers the ``cif_asr`` task, the CIF models and the ``cif`` /
``cif_hkd`` criterions, so ``fairseq-train --user-dir fairseq_hkd`` finds them.
"""
from fairseq_hkd import compat  # noqa: F401  (shims first)
from fairseq_hkd import tasks, models, criterions  # noqa: F401

__version__ = "0.1.0"
