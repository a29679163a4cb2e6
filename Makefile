# Two commands do all set-up on a fresh machine:
#   make demo   # AT+FR on real embedded MNIST, prints clean and PGD-20 accuracy
#   make test   # the test suite
# Both create .venv, install the pinned requirements and build the fr_fast._C extension (CUDA
# kernels too when nvcc and a CUDA build of torch are present).
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export CUDA_HOME ?= $(wildcard /usr/local/cuda)
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= 2

.PHONY: demo test test-all bench install clean

$(VENV)/.installed: setup.py requirements-dev.txt $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m fr_fast demo

test: install
	$(PY) -m pytest -q -m "not slow" tests

test-all: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) benchmarks/bench_ops.py

clean:
	rm -rf build *.egg-info fr_fast/_C*.so
