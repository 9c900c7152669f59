# Two commands on a fresh machine: `make run` and `make test`. Each bootstraps what it needs.
PY ?= python3.11
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PKGS := espeak-ng libespeak-ng1 libsndfile1 libportaudio2 chromium
# Debian's Node.js and npm, installed only where no npm is on PATH (a NodeSource nodejs brings its own)
NODE_APT_PKGS := nodejs npm
# The browser viewer's VRM avatar: three.js and @pixiv/three-vrm from npm (package.json and its
# lockfile; node_modules/ is never committed), served by `dpt-live serve` under /vendor/.
NODE_STAMP := node_modules/.package-lock.json
# Extra pip options for the torch install, e.g. TORCH_PIP_ARGS="--index-url <PyTorch's CPU-only
# wheel index>" (README "Install"); this project's machines find a local CPU wheel without them.
TORCH_PIP_ARGS ?=

.PHONY: run test lint gpu-check system venv web clean

# System packages (only when root and missing; otherwise say what is needed).
system:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "warning: apt-get could not install$$missing"; \
	  else echo "note: missing system packages:$$missing (install them for speech synthesis/audio I/O)"; fi; \
	fi

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need Python 3.11 ($(PY))"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip >/dev/null
	# torch first, on its own, so its build can be chosen: on PyPI the Linux default is the CUDA
	# build (several GB); TORCH_PIP_ARGS can point pip at the CPU-only one.
	$(BIN)/pip install -q $(TORCH_PIP_ARGS) torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: system $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	@if ! command -v npm >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing system packages: $(NODE_APT_PKGS)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(NODE_APT_PKGS) >/dev/null) \
	    || echo "warning: apt-get could not install $(NODE_APT_PKGS)"; fi
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund --loglevel=error; \
	else echo "note: npm is missing (apt-get install $(NODE_APT_PKGS)): the viewer's VRM avatar needs it"; fi

web: system $(NODE_STAMP)

# Lint (ruff, configured in pyproject.toml), then the suite; tests/test_layers.py holds the rooms'
# import contract (docs/ARCHITECTURE.md).
test: venv lint web
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .

# On a GPU machine: first `dpt-live doctor` (what this machine has, what is missing and how to get
# it: README "GPU install"), then every step the doctor says can run, each other one skipped with
# the reason: the CUDA/TensorRT tests (they skip themselves where they cannot run), the PyTorch CUDA
# figures (network cost by batch size, a stream of the bundled student, the reference sampler on a
# full-size model), the TensorRT plans of the bundled models (fp32 and fp16, checked against
# PyTorch; CUDA graphs with cuda-python) with a TensorRT stream, and a stream on onnxruntime-gpu's
# CUDA provider. GPU_PY: a Python with the project installed (a CUDA build of torch; tensorrt,
# pycuda and cuda-python for TensorRT); results go to GPU_OUT.
GPU_PY ?= $(BIN)/python
GPU_OUT ?= out/gpu-check
GPU_TMP ?= /tmp/dpt-live-gpu
GPU_CLI = $(GPU_PY) -m dpt_live.cli
# $(call gpu_needs,KEYS,WHAT): ends the recipe line (successfully) with the reason when the doctor
# says KEYS (see `dpt-live doctor --help`) are missing
gpu_needs = why=$$($(GPU_CLI) doctor --need $(1)) || { echo "gpu-check: skipped $(2): $$why" | tee -a $(GPU_OUT)/skipped.txt; exit 0; }

gpu-check:
	mkdir -p $(GPU_OUT) $(GPU_TMP)
	rm -f $(GPU_OUT)/skipped.txt
	$(GPU_CLI) doctor --json $(GPU_OUT)/doctor.json | tee $(GPU_OUT)/doctor.txt
	-nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee $(GPU_OUT)/gpu.txt
	set -o pipefail; $(GPU_PY) -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py tests/test_backends.py tests/test_export.py 2>&1 | tee $(GPU_OUT)/tests.txt
	@$(call gpu_needs,torch-cuda,the PyTorch CUDA figures); set -ex -o pipefail; \
	$(GPU_CLI) bench --batch-sizes 1,8,32,128,512 --device cuda --archs full,full+student,demo,demo-student \
	  --windows 80/80/1600 --steps 2 --cache-dir $(GPU_TMP) --markdown $(GPU_OUT)/batch.md --json $(GPU_OUT)/batch.json 2>&1 | tail -n 3; \
	$(GPU_CLI) stream --device cuda --backend torch --style big_mouth --audio clients/demo/speech.flac \
	  --report $(GPU_OUT)/stream-student-cuda.json -o $(GPU_TMP)/stream.npz; \
	$(GPU_CLI) init --arch full -o $(GPU_TMP)/full >/dev/null; \
	$(GPU_CLI) animate --model $(GPU_TMP)/full --device cuda --audio clients/demo/speech.flac -o $(GPU_TMP)/full.npz \
	  2>&1 | tail -n 1 | tee $(GPU_OUT)/animate-full-ddpm-cuda.txt
	@$(call gpu_needs,tensorrt-backend,the TensorRT plans and stream); set -ex -o pipefail; \
	for model in models/demo-student models/demo; do for precision in fp32 fp16; do \
	  DPT_LIVE_CACHE=$(GPU_TMP)/cache $(GPU_CLI) export tensorrt --model $$model --precision $$precision \
	    2>&1 | tee -a $(GPU_OUT)/tensorrt-plans.txt; done; done; \
	DPT_LIVE_CACHE=$(GPU_TMP)/cache $(GPU_CLI) stream --backend tensorrt --precision fp16 --style big_mouth \
	  --audio clients/demo/speech.flac --report $(GPU_OUT)/stream-student-tensorrt.json -o $(GPU_TMP)/stream-trt.npz \
	  2>&1 | tee $(GPU_OUT)/stream-student-tensorrt.txt
	@$(call gpu_needs,onnxruntime-gpu,the onnxruntime-gpu stream); set -ex -o pipefail; \
	DPT_LIVE_CACHE=$(GPU_TMP)/cache DPT_LIVE_ORT_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider \
	  $(GPU_CLI) stream --backend onnxruntime --style big_mouth --audio clients/demo/speech.flac \
	  --report $(GPU_OUT)/stream-student-ort-cuda.json -o $(GPU_TMP)/stream-ort.npz 2>&1 | tee $(GPU_OUT)/stream-student-ort-cuda.txt
	@echo "gpu-check: results in $(GPU_OUT)"; cat $(GPU_OUT)/skipped.txt 2>/dev/null || true

# The main job: the live server (`dpt-live serve`, docs/SERVER.md) with the bundled demo model, fed
# by the microphone or, without one, the bundled speech in real time in a loop. Open the printed
# viewer URL (it carries the access token) in a browser; Ctrl-C stops.
run: venv web
	@if $(BIN)/python -c "import sounddevice as sd; sd.query_devices(kind='input')" >/dev/null 2>&1; then \
	  src="--mic"; echo "serving live motion from the default microphone"; \
	else src="--audio clients/demo/speech.flac --loop"; \
	  echo "no microphone found: serving the bundled speech in real time, in a loop"; fi; \
	exec $(BIN)/dpt-live serve --style big_mouth $$src $(SERVE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info node_modules
