# make demo  — set up .venv and run the quickstart study (table + plots under results/);
#              run again, it continues an interrupted study and re-uses a finished one
# make test  — set up .venv and run the test suite
# make bench — run the benchmarks and rewrite benchmarks/results/
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip install --quiet -c constraints.txt

.PHONY: install test demo bench clean

install: $(VENV)/.installed

# torch goes first, pinned: any looser requirement with no torch present pulls the CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch
	$(PIP) -e ".[dev,baselines,navigation,wandb,references,minigrid]"
	touch $@

test: install
	$(PY) -m pytest -q tests

demo: install
	$(VENV)/bin/memrl train configs/quickstart.yaml --resume
	$(VENV)/bin/memrl report results/quickstart

bench: install
	$(PY) benchmarks/cells.py
	$(PY) benchmarks/rl_throughput.py

clean:
	rm -rf $(VENV) results
