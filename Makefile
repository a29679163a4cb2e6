# Two commands do all set-up on a fresh machine:
#   make demo   # AT+FR on real embedded MNIST, prints clean and PGD-20 accuracy
#   make test   # the test suite
# Both create .venv, install torch (pinned in requirements-dev.txt) and fr_fast[dev] editable, which builds
# the fr_fast._C extension: C++ kernels, plus CUDA kernels for the GPUs this machine has (none visible: C++
# only, a few minutes). `FR_FAST_CUDA=1 make test` also builds the CUDA kernels without a GPU (as CI does).
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export MAX_JOBS ?= 2

.PHONY: demo test test-all bench install package-check clean

$(VENV)/.installed: setup.py pyproject.toml requirements-dev.txt $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	# AutoAttack's torchattacks, without its dependencies (docs/install.md); the pin is in fr_fast/_optional.py
	$(PY) -m pip install -q --no-deps "$$($(PY) -c 'from fr_fast._optional import TORCHATTACKS; print(TORCHATTACKS)')"
	# one line: which kernels were built, and why (pip -q hides the build's own line)
	$(PY) -c 'from fr_fast.ops import _extension as e; print(e.summary(e.LOAD_ERROR, e.build_info()))'
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

# sdist -> wheel built from it alone -> installed into a temporary folder -> imported (CPU-only build)
package-check: install
	PY=$(PY) .ci/package_check

clean:
	rm -rf build dist *.egg-info fr_fast/_C*.so fr_fast/_C.build.json
