"""CIF models: importing registers the ``cif_transformer`` model and its architectures."""
from fairseq_hkd.models import cif_model  # noqa: F401
