# Two commands: `make demo` (the kit's main job on the embedded defaults) and `make test`.
# Both create .venv/ and install what they need on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# cpu,dev on CPU machines; EXTRAS=gpu,dev on CUDA machines (onnxruntime-gpu instead of onnxruntime).
EXTRAS ?= cpu,dev
DATA   ?= ../shared/data
RUNS   ?= runs
PORT   ?= 3000
# Bearer token of the demo server's POST /feedback (set your own for anything but a local demo).
TOKEN  ?= demo-token

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# Demo variant: the first of these CPU presets whose gates pass.
DEMO_PRESETS ?= cpu-int8-pruned cpu-int8 cpu-fp32
BENCH_PRESETS ?= cpu-fp32 cpu-int8 cpu-int8-pruned

.PHONY: demo serve serve-bench test test-container test-matrix support-matrix lint bench bench-gpu reliability image install lock clean

install: $(VENV)/.installed

# Every version comes from constraints.txt (the lock; `make lock` renews it), so that the tests, the demo and the
# bento run the same code; `pip check` then proves the set consistent.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	$(BIN)/pip check
	touch $@

# Resolve pyproject.toml afresh (the newest versions it allows) in a scratch environment, write constraints.txt
# from it and set the bentofiles' pins to match. Review the diff, then `make install` and the tests.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --disable-pip-version-check -e '.[cpu,dev,postgres]'
	$(PYTHON) deploy/lock.py freeze .lock-venv/bin/python
	$(PYTHON) deploy/lock.py sync
	rm -rf .lock-venv

demo: $(VENV)/.installed
	$(BIN)/knowacq train --preset demo \
	    --train $(DATA)/sst2/train.tsv --dev $(DATA)/sst2/dev.tsv \
	    --label-names negative,positive --out $(RUNS)/demo --overwrite
	$(BIN)/knowacq eval $(RUNS)/demo --data $(DATA)/sst2/dev.tsv --reliability $(RUNS)/demo/reliability.png
	@rm -f $(RUNS)/demo-variant.txt
	@for p in $(DEMO_PRESETS); do \
	    if $(BIN)/knowacq optimize $(RUNS)/demo --preset $$p --out $(RUNS)/variants/$$p --overwrite; then \
	        echo $(RUNS)/variants/$$p > $(RUNS)/demo-variant.txt; break; \
	    fi; echo "preset $$p refused by its gates; trying the next"; \
	done; test -s $(RUNS)/demo-variant.txt
	$(BIN)/knowacq eval $$(cat $(RUNS)/demo-variant.txt) --data $(DATA)/sst2/dev.tsv
	@# One turn of the active-learning loop: rows 60,001-62,000 of the training file as traffic, their labels
	@# as the annotators' (the dev file stays unseen), then a gated retrain: promoted or rejected.
	rm -rf $(RUNS)/loop
	$(BIN)/knowacq al demo-loop --variant $$(cat $(RUNS)/demo-variant.txt) --traffic $(DATA)/sst2/train.tsv \
	    --skip 60000 --n-traffic 2000 --labels 200 --out $(RUNS)/loop
	@echo
	@echo "demo model:   $(RUNS)/demo  (Hugging Face folder + knowacq.json with labels and temperature)"
	@echo "report:       $(RUNS)/demo/metrics.json, $(RUNS)/demo/reliability.png"
	@echo "variant:      $$(cat $(RUNS)/demo-variant.txt)  (model.onnx + manifest.json with its gate results)"
	@echo "loop:         $(RUNS)/loop/loop.json  (captured, labelled, retrained, promoted or rejected)"
	@$(MAKE) --no-print-directory serve

# Serves the demo variant on PORT (foreground; Ctrl-C stops). The feedback store is $(RUNS)/feedback.db.
serve: $(VENV)/.installed
	@test -s $(RUNS)/demo-variant.txt || { echo "no demo variant yet: run 'make demo'"; exit 2; }
	@echo
	@echo "serving $$(cat $(RUNS)/demo-variant.txt) on http://127.0.0.1:$(PORT); try, from another shell:"
	@echo "  curl -s -X POST http://127.0.0.1:$(PORT)/classify -H 'Content-Type: application/json' \\"
	@echo "       -d '{\"texts\": [\"a gripping, beautifully acted film\", \"flat and far too long\"]}'"
	@echo "  curl -s http://127.0.0.1:$(PORT)/model"
	@echo "  curl -s -X POST http://127.0.0.1:$(PORT)/classify -H 'Content-Type: application/json' -d '{\"texts\": [\"so-so\"]}'"
	@echo "  #   ^ low-confidence, so recorded: feedback takes its prediction_id"
	@echo "  curl -s -X POST http://127.0.0.1:$(PORT)/feedback -H 'Content-Type: application/json' \\"
	@echo "       -H 'Authorization: Bearer $(TOKEN)' -d '{\"prediction_id\": \"<id from classify>\", \"label\": \"negative\"}'"
	@echo "  curl -s http://127.0.0.1:$(PORT)/metrics | grep ^knowacq_"
	@echo
	KNOWACQ_STORE_URL=sqlite:///$(abspath $(RUNS))/feedback.db \
	    $(BIN)/knowacq serve --model $$(cat $(RUNS)/demo-variant.txt) --port $(PORT) --token $(TOKEN)

# Times PyTorch fp32 and the demo model's variants on SST-2 dev; writes runs/bench/ (commits nothing).
bench: $(VENV)/.installed
	test -f $(RUNS)/demo/knowacq.json || $(MAKE) demo
	@variants=""; for p in $(BENCH_PRESETS); do \
	    test -f $(RUNS)/variants/$$p/manifest.json && grep -q '"passed": true' $(RUNS)/variants/$$p/manifest.json \
	    || $(BIN)/knowacq optimize $(RUNS)/demo --preset $$p --out $(RUNS)/variants/$$p --overwrite --no-progress \
	    || { echo "preset $$p refused by its gates: not benchmarked"; continue; }; \
	    variants="$$variants --variants $(RUNS)/variants/$$p"; \
	done; \
	$(BIN)/knowacq bench --model $(RUNS)/demo $$variants --data $(DATA)/sst2/dev.tsv --out $(RUNS)/bench/results.json

# The served demo variant over loopback at concurrency 1, 8 and 32 against the in-process engine.
serve-bench: $(VENV)/.installed
	@test -s $(RUNS)/demo-variant.txt || { echo "no demo variant yet: run 'make demo'"; exit 2; }
	$(BIN)/knowacq bench-serve --model $$(cat $(RUNS)/demo-variant.txt) --data $(DATA)/sst2/dev.tsv \
	    --out $(RUNS)/bench/serve.json

# Lint and type-check first (seconds), then the suite.
test: lint
	$(BIN)/pytest

# The support matrix's tests: a tiny model of each architecture through train, every preset, eval and the server
# (tests/export/test_support.py). `make support-matrix` runs them and rewrites the README's table from them.
test-matrix: $(VENV)/.installed
	$(BIN)/pytest -m matrix tests/export/test_support.py

support-matrix: $(VENV)/.installed
	$(BIN)/python benchmarks/support_matrix.py

# The OCI image built from a tiny variant and served from a container, checked from outside (tests/serve/test_container.py;
# needs buildah and mmdebstrap, or fails under CI=true). .ci/run calls it after `make test`.
test-container: $(VENV)/.installed
	$(BIN)/pytest -m container tests/serve/test_container.py

# The CPU bento's OCI image (deploy/image.py): VARIANT into the BentoML model store, `bentoml build`, then
# `bentoml containerize` (Docker or Podman where an engine runs, else buildah on a local Debian base). Tagged
# knowacq:<bento version> unless IMAGE=name:tag; the report (timings, size, packages) goes to $(RUNS)/image/.
VARIANT ?= $(shell cat $(RUNS)/demo-variant.txt 2>/dev/null)
IMAGE   ?=
image: $(VENV)/.installed
	@test -n "$(VARIANT)" || { echo "no variant: run 'make demo' first, or pass VARIANT=runs/variants/<preset>"; exit 2; }
	$(BIN)/python deploy/image.py build $(VARIANT) $(if $(IMAGE),--tag $(IMAGE)) --report $(RUNS)/image/report.json

# ruff (lint and format) over the tree, mypy (strict on knowacq/base, export/ and bento/; see pyproject.toml).
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# On a CUDA machine: PyTorch eager fp16/bf16 against the gpu-fp16 graph through the runtime (docs/gpu.md).
# Needs torch, transformers, onnx and onnxruntime-gpu only; RUN_ARGS passes options (--variant, --dev, --out).
bench-gpu:
	PYTHONPATH=$(CURDIR):$(PYTHONPATH) $(PYTHON) benchmarks/gpu.py $(RUN_ARGS)

# The reliability suite at full size (about 20 minutes on 2 cores; `make test` runs a short version of each
# part): fuzzing, load and overload, kill -9 cycles on SQLite and Postgres, drain, hot swap, auth, PII.
# Figures: $(RUNS)/reliability/*.json and the table in $(RUNS)/reliability/summary.md (see docs/reliability.md).
reliability: $(VENV)/.installed
	rm -rf $(RUNS)/reliability
	KNOWACQ_RELIABILITY=full KNOWACQ_RELIABILITY_OUT=$(abspath $(RUNS))/reliability \
	    $(BIN)/pytest tests/reliability --timeout 3600 -q
	$(BIN)/python tests/reliability/report.py $(RUNS)/reliability | tee $(RUNS)/reliability/summary.md

clean:
	rm -rf $(RUNS) .pytest_cache build *.egg-info
