# clazzify: `make demo` runs the whole pipeline locally, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOME_DIR ?= .clazzify
DEMO_DATA ?= $(HOME_DIR)/demo-data
# The default recipe (EfficientNet-Lite0, packaged weights, calibrated head) as real runs take
# it; shards of 150 show the ParallelFor fan-out on the demo's 400 photos.
DEMO_SET ?= shard_size=150
PYTEST_ARGS ?=
# `make test` runs whole test files side by side in pytest-xdist workers, one more than the
# cores: most of the suite waits on servers, subprocesses and the browser, not on a core.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo test test-fast lint compile serve mlflow-ui review bench clean help

help: ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# Every third-party package comes from requirements.lock (exact versions, hashes checked;
# Python 3.11 on linux x86_64, cpu+test extras); the project itself goes on top with no
# dependencies of its own, built with the lock's setuptools. Refresh: docs/security.md.
# pip byte-compiles one file at a time: about 5 of the install's 8 minutes on 2 cores.
# compileall on every core does it in 1 min 14 s. It must be done at install: where
# PYTHONDONTWRITEBYTECODE is set, nothing imported later is ever cached, and every process
# compiles TensorFlow anew (a clean-clone CI took 26 minutes instead of 20 that way).
$(BIN)/clazzify: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile --require-hashes -r requirements.lock
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

install: $(BIN)/clazzify ## Create .venv and install the locked dependencies, then the project

demo: $(BIN)/clazzify ## Draw the synthetic demo set and run the whole pipeline locally
	$(BIN)/clazzify demo-data $(DEMO_DATA) --per-class 100
	$(BIN)/python -m pipelines.train run --local --source $(DEMO_DATA) --home $(HOME_DIR) \
		$(foreach kv,$(DEMO_SET),--set $(kv))

test: $(BIN)/clazzify ## Run every test tier (unit, components, integration, model, docs) on every core
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(BIN)/clazzify ## The edit-test loop: every test not marked slow (under a minute, no services)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

lint: $(BIN)/clazzify ## Ruff
	$(BIN)/ruff check src components pipelines serving tests benchmarks

compile: $(BIN)/clazzify ## Compile the pipeline to train.yaml
	$(BIN)/python -m pipelines.train compile -o train.yaml $(if $(REGISTRY),--registry $(REGISTRY))

mlflow-ui: $(BIN)/clazzify ## Open the MLflow UI on the local store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(HOME_DIR))/mlflow.db --host 127.0.0.1 --port 5000

SERVE_HOST ?= 127.0.0.1
serve: $(BIN)/clazzify ## Serve the local MLflow champion on 127.0.0.1:8080 (SERVE_HOST=0.0.0.0 for every interface)
	@test -s $(HOME_DIR)/api-keys || (mkdir -p $(HOME_DIR) && \
		$(BIN)/python -c "import secrets; print(secrets.token_urlsafe(32))" > $(HOME_DIR)/api-keys)
	@echo "API key: $$(head -n1 $(HOME_DIR)/api-keys)   (send 'Authorization: Bearer <key>')"
	MLFLOW_TRACKING_URI=sqlite:///$(abspath $(HOME_DIR))/mlflow.db $(BIN)/clazzify serve \
		--host $(SERVE_HOST) --model-uri models:/clazzify@champion --watch-alias \
		--api-keys-file $(HOME_DIR)/api-keys $(SERVE_ARGS)

REVIEW_DB ?= sqlite:///$(abspath $(HOME_DIR))/scores.db
review: $(BIN)/clazzify ## Serve the moderators' review page on :8090 (REVIEW_DB=postgresql://...)
	$(BIN)/clazzify review-ui --db $(REVIEW_DB) --thumb-cache $(HOME_DIR)/thumbs $(REVIEW_ARGS)

bench: $(BIN)/clazzify ## Smoke-run the CPU benchmarks at tiny sizes (~1 min; full runs: benchmarks/README.md)
	$(BIN)/python benchmarks/ingest_hdf5.py --limit 64 --image-size 64 --shards 2 --repeats 1 --out $(HOME_DIR)/bench/ingest_hdf5.json
	$(BIN)/python benchmarks/input_pipeline.py --rows 256 --image-size 64 --batch-size 32 --architecture compact \
		--train-steps 2 --out $(HOME_DIR)/bench/input_pipeline.json

clean: ## Remove local state (MLflow store, KFP outputs, demo data)
	rm -rf $(HOME_DIR)

# --- Cluster: images, manifests (names and tags come from components/images.py) -------
REGISTRY ?=
DOCKER ?= docker
KUBECTL ?= $(BIN)/kubectl
OVERLAY ?= local
GIT_COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE = $(shell $(PYTHON) components/images.py $(1) $(if $(REGISTRY),--registry $(REGISTRY)))
IMAGE_NAMES := pipeline pipeline-gpu serving mlflow

.PHONY: images push print-images manifests image-pipeline image-pipeline-gpu image-serving image-mlflow

print-images: ## Print the image references (REGISTRY=host/namespace moves them)
	@$(PYTHON) components/images.py $(if $(REGISTRY),--registry $(REGISTRY))

images: image-pipeline image-pipeline-gpu image-serving image-mlflow ## Build every image (REGISTRY=... tags them for it)

image-pipeline:
	$(DOCKER) build --target cpu --build-arg GIT_COMMIT=$(GIT_COMMIT) -t $(call IMAGE,pipeline) .

image-pipeline-gpu:
	$(DOCKER) build --target gpu --build-arg GIT_COMMIT=$(GIT_COMMIT) -t $(call IMAGE,pipeline-gpu) .

image-serving:
	$(DOCKER) build -f serving/Dockerfile --build-arg GIT_COMMIT=$(GIT_COMMIT) -t $(call IMAGE,serving) .

image-mlflow:
	$(DOCKER) build -f mlflow/Dockerfile -t $(call IMAGE,mlflow) .

push: ## Push every image: make images push REGISTRY=registry.example.com/team
	@set -e; for name in $(IMAGE_NAMES); do \
		ref=$$($(PYTHON) components/images.py $$name $(if $(REGISTRY),--registry $(REGISTRY))); \
		echo "push $$ref"; $(DOCKER) push $$ref; done

manifests: $(BIN)/clazzify ## Render a kustomize overlay: make manifests OVERLAY=local|production
	$(KUBECTL) kustomize manifests/overlays/$(OVERLAY)
