"""Errors in what the user gave (a file, a folder, an option), and how fairseq's command lines show them.

``UserError`` (a ``ValueError``) carries a one-line message naming the file, line or option and the fix;
``ManifestError``, ``AudioError`` and the ``cif_asr`` task's option checks derive from it. fairseq-train,
-validate and -generate let such an exception reach the interpreter, which would print a traceback:
:func:`install_excepthook` (called when the plugin is imported) prints ``error: <message>`` instead
(exit status 1). ``FAIRSEQ_HKD_TRACEBACK=1`` shows the traceback as well. Other exceptions are bugs
and keep their traceback.

No torch or fairseq import here: the torch-free runtime may use these classes.
"""
from __future__ import annotations

import os
import sys

__all__ = ["UserError", "UserFileNotFoundError", "install_excepthook"]


class UserError(ValueError):
    """Bad input or options; the message names where and how to fix it."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named (or that a step before should have written) is missing."""


def _excepthook(previous):
    def hook(exc_type, exc, tb):
        if issubclass(exc_type, UserError) and os.environ.get("FAIRSEQ_HKD_TRACEBACK", "") in ("", "0"):
            print(f"error: {exc}", file=sys.stderr)
            return
        previous(exc_type, exc, tb)

    hook.fairseq_hkd = True
    return hook


def install_excepthook() -> None:
    """Show uncaught ``UserError``s as one line (idempotent)."""
    if not getattr(sys.excepthook, "fairseq_hkd", False):
        sys.excepthook = _excepthook(sys.excepthook)
