"""ops/cif."""
