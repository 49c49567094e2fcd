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

.PHONY: demo test install clean

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
	@echo
	@echo "demo model:   $(RUNS)/demo  (Hugging Face folder + knowacq.json with labels and temperature)"
	@echo "report:       $(RUNS)/demo/metrics.json, $(RUNS)/demo/reliability.png"

test: $(VENV)/.installed
	$(BIN)/pytest

clean:
	rm -rf $(RUNS) .pytest_cache build *.egg-info
