# Two commands on a fresh machine: `make run` and `make test`. Each bootstraps what it needs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PKGS := espeak-ng libespeak-ng1 libsndfile1 libportaudio2 chromium
# Extra pip options for the torch install, e.g. TORCH_PIP_ARGS="--index-url <PyTorch's CPU-only
# wheel index>" (README "Install"); this project's machines find a local CPU wheel without them.
TORCH_PIP_ARGS ?=

.PHONY: run test system venv clean

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

test: venv
	$(BIN)/python -m pytest -q

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
