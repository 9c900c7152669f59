# Two commands on a fresh machine: `make run` and `make test`. Each bootstraps what it needs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PKGS := espeak-ng libespeak-ng1 libsndfile1 libportaudio2 chromium

.PHONY: run test lint gpu-check system venv clean

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
	# CPU torch first: a plain 'torch' requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: system $(STAMP)

# Lint (ruff, configured in pyproject.toml), then the suite; tests/test_layers.py holds the rooms'
# import contract (docs/ARCHITECTURE.md).
test: venv lint
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .

# On a GPU machine: the CUDA and TensorRT tests (skipped elsewhere) and the batched-throughput figures.
# GPU_PY: a Python that has a CUDA build of torch (and tensorrt + pycuda for the TensorRT paths).
GPU_PY ?= $(BIN)/python
GPU_OUT ?= out/gpu-check
gpu-check:
	mkdir -p $(GPU_OUT)
	nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $(GPU_OUT)/gpu.txt
	$(GPU_PY) -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a $(GPU_OUT)/gpu.txt
	$(GPU_PY) -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py tests/test_backends.py tests/test_export.py tests/test_convert.py 2>&1 | tee $(GPU_OUT)/tests.txt

# The main job: the live server (`dpt-live serve`, docs/SERVER.md) with the bundled demo model, fed
# by the microphone or, without one, the bundled speech in real time in a loop. Open the printed
# viewer URL (it carries the access token) in a browser; Ctrl-C stops.
run: venv
	@if $(BIN)/python -c "import sounddevice as sd; sd.query_devices(kind='input')" >/dev/null 2>&1; then \
	  src="--mic"; echo "serving live motion from the default microphone"; \
	else src="--audio clients/demo/speech.flac --loop"; \
	  echo "no microphone found: serving the bundled speech in real time, in a loop"; fi; \
	exec $(BIN)/dpt-live serve --style big_mouth $$src $(SERVE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
