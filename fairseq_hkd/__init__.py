"""fairseq-hkd: CIF speech recognition with hierarchical knowledge distillation (fairseq plugin).

Importing this package registers the ``cif_asr`` task, the CIF models and the ``cif`` /
``cif_hkd`` criterions, so ``fairseq-train --user-dir fairseq_hkd`` finds them.

Where torch or fairseq is not installed (a deployment of the ONNX runtime, ``fairseq_hkd.runtime``,
which needs neither), there is nothing to register and the import skips it. Only their absence is
skipped: any other ImportError (a dependency of fairseq missing, a broken module of ours) propagates.
"""
__version__ = "0.1.0"


def _training_stack_installed() -> bool:
    """True when torch and fairseq import; False when one of them is not installed."""
    try:
        import torch  # noqa: F401
        import fairseq  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name in ("torch", "fairseq"):
            return False
        raise
    return True


if _training_stack_installed():
    from fairseq_hkd import compat  # noqa: F401  (shims first)
    from fairseq_hkd import tasks, models, criterions  # noqa: F401
    from fairseq_hkd.errors import install_excepthook

    install_excepthook()  # fairseq-train & co.: bad input is one line, not a traceback (errors.py)
