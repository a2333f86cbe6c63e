# LoRA Bakery: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= demo-work
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

# constraints.txt pins torch/torchvision to the builds CI and our machines carry.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/bakery demo --workdir $(WORKDIR)

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache
