"""tasks."""
from fairseq_hkd.tasks import cif_asr  # noqa: F401
