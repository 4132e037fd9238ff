"""CPU runtime for exported models (``fairseq-hkd-export``): onnxruntime, numpy, soundfile and
kaldi-native-fbank; neither torch nor fairseq. ``model_dir.py`` (the directory format),
``frontend.py`` (audio -> fbank), ``cif.py`` (CIF in numpy float64), ``search.py`` (greedy / beam
search / NAR argmax), ``recognizer.py`` (``OnnxRecognizer``)."""
