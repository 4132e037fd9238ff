"""Corpus preparation: manifests for AISHELL-1, LibriSpeech and the synthesized demo corpus (run each with python -m)."""
