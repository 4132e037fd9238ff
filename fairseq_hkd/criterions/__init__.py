"""Criterions: importing registers ``cif`` (and ``cif_hkd`` once present)."""
from fairseq_hkd.criterions import cif  # noqa: F401
from fairseq_hkd.criterions import cif_hkd  # noqa: F401
