# fairseq-hkd: make setup | make test | make demo
# `make setup` is idempotent: it re-runs scripts/setup.sh only when the requirements, setup.py or the
# script itself changed (stamp file in the venv), so a second run returns at once.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PYTEST_ARGS ?=

.PHONY: setup test demo clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.py scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	@touch $@

test: $(STAMP)
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	bash examples/synth/run.sh $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
