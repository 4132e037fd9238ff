"""Every fairseq / torch / numpy version shim of the package lives here, each with its reason."""
