# LoRA Bakery: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= demo-work
BIN := $(VENV)/bin

.PHONY: install demo test bench clean browser

# constraints.txt pins torch/torchvision to the builds CI and our machines carry.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/bakery demo --workdir $(WORKDIR) --judges

# The evaluation report test opens the HTML report in headless Chromium (Debian's package); the review studio's
# browser test drives it through chromium-driver (selenium).
browser:
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || { echo "the browser tests need Chromium: apt-get install chromium chromium-driver (as root)"; exit 1; }

test: install browser
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache
