# Two commands: `make demo` (the kit's main job on the embedded defaults) and `make test`.
# Both create .venv/ and install what they need on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# cpu,dev on CPU machines; EXTRAS=gpu,dev on CUDA machines (onnxruntime-gpu instead of onnxruntime).
EXTRAS ?= cpu,dev
DATA   ?= ../shared/data
RUNS   ?= runs

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# Demo variant: the first of these CPU presets whose gates pass.
DEMO_PRESETS ?= cpu-int8-pruned cpu-int8 cpu-fp32
BENCH_PRESETS ?= cpu-fp32 cpu-int8 cpu-int8-pruned

.PHONY: demo test bench install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $@

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
	@echo
	@echo "demo model:   $(RUNS)/demo  (Hugging Face folder + knowacq.json with labels and temperature)"
	@echo "report:       $(RUNS)/demo/metrics.json, $(RUNS)/demo/reliability.png"
	@echo "variant:      $$(cat $(RUNS)/demo-variant.txt)  (model.onnx + manifest.json with its gate results)"

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

test: $(VENV)/.installed
	$(BIN)/pytest

clean:
	rm -rf $(RUNS) .pytest_cache build *.egg-info
