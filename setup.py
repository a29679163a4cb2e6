"""Build fr_fast's extension, fr_fast._C: C++ kernels always, CUDA kernels for the GPUs this machine has (or
the architectures asked for). Metadata lives in pyproject.toml; this file only describes the extension.

Which kernels are built (one line on stderr says which, and why; `pip -v` shows it):
  a GPU is visible             C++ + CUDA kernels for the visible GPUs' architectures
  no GPU visible               C++ kernels only (a CUDA build for no GPU takes ~20 minutes for nothing)
  TORCH_CUDA_ARCH_LIST="8.0;9.0"  C++ + CUDA kernels for those architectures, GPU or not
  FR_FAST_CUDA=1               C++ + CUDA kernels (for the visible GPUs, else DEFAULT_CUDA_ARCHS); the build
                               fails when they cannot be built instead of falling back to C++ only
  FR_FAST_CPU_ONLY=1           C++ kernels only
Other settings:
  CUDA_HOME / CUDA_PATH    the CUDA toolkit (default: the toolkit that `nvcc` on PATH runs, wrappers
                           followed, else /usr/local/cuda)
  MAX_JOBS                 parallel compile jobs (torch's ninja build reads it)
  FR_FAST_DEBUG=1          -O0 -g, unstripped (release builds are -O3 and stripped)
  FR_FAST_PORTABLE=1       no AVX2/FMA/F16C even where the build machine has them
  FR_FAST_NO_EXT=1         no extension at all (the pure-PyTorch reference ops run)
Unless FR_FAST_CUDA=1, a CUDA build that fails falls back to the C++ extension, with a one-line warning.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "build_backend"))
from fr_fast_backend import installed_torch_version, public_version  # noqa: E402  (one place for both)

# Architectures compiled for FR_FAST_CUDA=1 when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible (CI):
# sm_75 (Turing), sm_80 (Ampere; its code also runs on 8.6/8.9), sm_90 (Hopper), plus sm_90 PTX that the
# driver compiles for newer GPUs (Blackwell). Those the toolkit cannot target are dropped.
DEFAULT_CUDA_ARCHS = ("7.5", "8.0", "9.0")
CONVENTIONAL_CUDA_HOMES = ("/usr/local/cuda", "/opt/cuda")
_FIX = "set CUDA_HOME to the toolkit's root, or FR_FAST_CPU_ONLY=1 to build without CUDA"
_ADD_CUDA = 'FR_FAST_CUDA=1 or TORCH_CUDA_ARCH_LIST="8.0;9.0" adds the CUDA kernels'


def _flag(name: str, environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(name, "0").lower() in ("1", "true", "yes")


def _warn(message: str) -> None:
    print(f"fr_fast: warning: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# CUDA toolkit discovery (pure functions of the environment and the file system; unit-tested)
# ----------------------------------------------------------------------------------------------
def toolkit_problem(home: str) -> str | None:
    """Why ``home`` is not a usable CUDA toolkit root (None when it has bin/nvcc and libcudart)."""
    if not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return f"no bin/nvcc in {home}"
    patterns = ("lib64/libcudart.so*", "lib/libcudart.so*", "targets/*/lib/libcudart.so*")
    if not any(glob.glob(os.path.join(home, pattern)) for pattern in patterns):
        return f"no libcudart in {home} (lib64/, lib/ or targets/*/lib/)"
    return None


def resolve_nvcc(path: str, max_depth: int = 4) -> str:
    """The nvcc binary that ``path`` really runs: symlinks resolved, and for a wrapper script the nvcc it
    names by absolute path (followed up to ``max_depth`` wrappers)."""
    real = os.path.realpath(path)
    for _ in range(max_depth):
        try:
            with open(real, "rb") as f:
                head = f.read(8192)
        except OSError:
            return real
        if not head.startswith(b"#!"):
            return real
        targets = [os.path.realpath(t) for t in re.findall(rb"(/[^\s\"'`;|&$()]*/nvcc)(?![\w.-])", head)]
        targets = [t.decode() for t in targets if t != real.encode() and os.path.isfile(t)]
        if not targets:
            return real
        real = targets[0]
    return real


def find_cuda_toolkit(environ: Mapping[str, str], which: Callable[[str], str | None] = shutil.which,
                      conventional: Sequence[str] = CONVENTIONAL_CUDA_HOMES) -> tuple[str | None, str]:
    """(toolkit root, how it was found), or (None, why none was found).

    Order: CUDA_HOME, CUDA_PATH (taken as given: a wrong one is reported, not replaced), the toolkit that
    `nvcc` on PATH runs (a wrapper script is followed to the nvcc it executes; torch would instead take
    the wrapper's grandparent folder, where libcudart is not), then the conventional locations.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = environ.get(var)
        if home:
            problem = toolkit_problem(home)
            return (home, var) if problem is None else (None, f"{var}={home}: {problem}")
    reasons = []
    nvcc = which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(resolve_nvcc(nvcc)))
        problem = toolkit_problem(home)
        if problem is None:
            return home, f"nvcc on PATH ({nvcc})"
        reasons.append(f"nvcc on PATH ({nvcc}): {problem}")
    else:
        reasons.append("no nvcc on PATH")
    for home in conventional:
        if os.path.isdir(home):
            problem = toolkit_problem(home)
            if problem is None:
                return home, "conventional location"
            reasons.append(problem)
    if not any(os.path.isdir(home) for home in conventional):
        reasons.append(f"none of {', '.join(conventional)}")
    return None, "no CUDA toolkit found: " + "; ".join(reasons)


def default_cuda_arch_list(supported: set[str] | None) -> str:
    """TORCH_CUDA_ARCH_LIST for a build that sees no GPU: DEFAULT_CUDA_ARCHS that the toolkit supports
    (``supported``: e.g. {"75", "80"} from `nvcc --list-gpu-arch`; None = unknown, keep all), PTX for the last."""
    archs = [a for a in DEFAULT_CUDA_ARCHS if supported is None or a.replace(".", "") in supported]
    if not archs:  # a toolkit newer than every default: its oldest architecture
        oldest = min(supported, key=int)
        archs = [f"{oldest[:-1]}.{oldest[-1]}"]
    return ";".join(archs[:-1] + [archs[-1] + "+PTX"])


def _nvcc_output(home: str, *args: str) -> str:
    try:
        return subprocess.run([os.path.join(home, "bin", "nvcc"), *args], capture_output=True, text=True,
                              timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


class BuildError(SystemExit):
    """A build setting that cannot be honoured: one line, no traceback."""

    def __init__(self, message: str):
        super().__init__(f"fr_fast: error: {message}")


class CudaRequest(NamedTuple):
    """Whether to build the CUDA kernels, decided from the environment and the visible GPUs."""

    want: bool            # build them
    required: bool        # FR_FAST_CUDA=1: fail the build rather than fall back to the C++ kernels
    archs: str | None     # TORCH_CUDA_ARCH_LIST to compile for (None: DEFAULT_CUDA_ARCHS the toolkit has)
    why: str              # what decided it, for the build's one line


def cuda_request(environ: Mapping[str, str], visible_archs: Sequence[str]) -> CudaRequest:
    """The CUDA part of the build: asked for (FR_FAST_CUDA=1, TORCH_CUDA_ARCH_LIST), or for the GPUs visible
    (``visible_archs``: compute capabilities such as "8.0"), else none. FR_FAST_CPU_ONLY=1 wins."""
    cpu_only, forced = _flag("FR_FAST_CPU_ONLY", environ), _flag("FR_FAST_CUDA", environ)
    if cpu_only and forced:
        raise BuildError("FR_FAST_CPU_ONLY=1 and FR_FAST_CUDA=1 contradict each other: unset one of them")
    if cpu_only:
        return CudaRequest(False, False, None, "FR_FAST_CPU_ONLY=1")
    listed = environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if listed:
        return CudaRequest(True, forced, listed, f"TORCH_CUDA_ARCH_LIST={listed}")
    if visible_archs:
        archs = sorted(set(visible_archs), key=lambda arch: tuple(int(part) for part in arch.split(".")))
        gpus = "the visible GPU" if len(archs) == 1 else "the visible GPUs"
        return CudaRequest(True, forced, ";".join(archs), f"{gpus}, sm_{', sm_'.join(a.replace('.', '') for a in archs)}")
    if forced:
        return CudaRequest(True, True, None, "FR_FAST_CUDA=1, no GPU visible: the default architectures")
    return CudaRequest(False, False, None, "no GPU visible")


def plan_line(request: CudaRequest, problem: str | None, arch_list: str | None) -> str:
    """The one line the build prints about its choice (``problem``: why the wanted CUDA part cannot be built)."""
    if request.want and problem is None:
        return f"fr_fast: building the C++ and CUDA kernels for TORCH_CUDA_ARCH_LIST={arch_list} ({request.why})"
    if request.want:
        return (f"fr_fast: warning: building the C++ kernels only: the CUDA kernels were asked for "
                f"({request.why}) but {problem}")
    hint = "" if request.why == "FR_FAST_CPU_ONLY=1" else f"; {_ADD_CUDA}"
    return f"fr_fast: building the C++ kernels only ({request.why}{hint})"


def torch_mismatch(build_version: str, installed_version: str | None) -> str | None:
    """Why the extension being compiled against torch ``build_version`` would not load into this environment's
    torch (``installed_version``; None when it has none yet), or None."""
    if installed_version is None or public_version(build_version) == public_version(installed_version):
        return None
    return (f"compiling against torch {build_version} (an isolated build environment) for an environment with "
            f"torch {installed_version}: the kernels will not load there; build with `pip install "
            f"--no-build-isolation .`")


def _visible_gpu_archs(torch) -> list[str]:
    if torch.version.cuda is None:
        return []
    try:
        return [f"{major}.{minor}" for major, minor in
                (torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))]
    except Exception:  # no driver, or a broken one: nothing visible
        return []


def _cuda_problem(torch) -> tuple[str | None, str | None]:
    """(toolkit root, None), or (None, why the CUDA kernels cannot be built here)."""
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} is a CPU-only build (install a CUDA build of torch)"
    home, how = find_cuda_toolkit(os.environ)
    if home is None:
        return None, f"{how} ({_FIX})"
    release = re.search(r"release (\d+)\.(\d+)", _nvcc_output(home, "--version"))
    if release is None:
        return None, f"{home}/bin/nvcc --version does not run ({_FIX})"
    if release.group(1) != torch.version.cuda.split(".")[0]:
        return None, (f"the toolkit in {home} is CUDA {release.group(1)}.{release.group(2)}, torch was built with "
                      f"CUDA {torch.version.cuda} ({_FIX} of the same major version)")
    return home, None


def _cuda_plan(torch) -> tuple[str | None, str | None, bool]:
    """(toolkit root, None, required) to build the CUDA kernels, or (None, why not, required). Sets
    TORCH_CUDA_ARCH_LIST for torch's builder and prints the one line that states the choice."""
    request = cuda_request(os.environ, _visible_gpu_archs(torch))
    if not request.want:
        print(plan_line(request, None, None), file=sys.stderr, flush=True)
        return None, request.why, False
    home, problem = _cuda_problem(torch)
    if problem is not None:
        if request.required:
            raise BuildError(f"FR_FAST_CUDA=1 but the CUDA kernels cannot be built: {problem}")
        print(plan_line(request, problem, None), file=sys.stderr, flush=True)
        return None, problem, False
    if request.archs is None:
        supported = set(re.findall(r"compute_(\d+)", _nvcc_output(home, "--list-gpu-arch"))) or None
        os.environ["TORCH_CUDA_ARCH_LIST"] = default_cuda_arch_list(supported)
    else:
        os.environ["TORCH_CUDA_ARCH_LIST"] = request.archs
    print(plan_line(request, None, os.environ["TORCH_CUDA_ARCH_LIST"]), file=sys.stderr, flush=True)
    return home, None, request.required


# ----------------------------------------------------------------------------------------------
# The extension
# ----------------------------------------------------------------------------------------------
def _simd_flags() -> list[str]:
    """AVX2/FMA/F16C when the build machine has them (the elementwise kernels run ~3x faster than with
    the x86-64 baseline's SSE2). FR_FAST_PORTABLE=1 builds for the baseline instead."""
    if _flag("FR_FAST_PORTABLE"):
        return []
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return []
    return ["-mavx2", "-mfma", "-mf16c"] if {"avx2", "fma", "f16c"} <= set(flags) else []


def _compile_flags() -> tuple[list[str], list[str], list[str]]:
    """(C++ flags, nvcc flags, link flags): release -O3 without debug info, stripped; FR_FAST_DEBUG=1 -O0 -g.
    -g0 comes last so it wins over the -g in Python's own CFLAGS."""
    if _flag("FR_FAST_DEBUG"):
        return ["-O0", "-g", "-fopenmp"] + _simd_flags(), ["-O0", "-g", "-lineinfo"], ["-fopenmp"]
    return ["-O3", "-fopenmp", "-g0"] + _simd_flags(), ["-O3"], ["-fopenmp", "-s"]


def _extensions() -> tuple[list, dict]:
    if _flag("FR_FAST_NO_EXT"):
        return [], {}
    import torch

    mismatch = torch_mismatch(torch.__version__, installed_torch_version())
    if mismatch is not None:
        _warn(mismatch)
    cuda_home, no_cuda, cuda_required = _cuda_plan(torch)
    build_info = {"torch": torch.__version__, "cuda": cuda_home is not None, "no_cuda": no_cuda,
                  "cuda_archs": os.environ.get("TORCH_CUDA_ARCH_LIST") if cuda_home is not None else None}
    if cuda_home is not None:  # before cpp_extension is imported: it reads CUDA_HOME once, at import
        os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension

    if cuda_home is not None:
        cpp_extension.CUDA_HOME = cuda_home  # in case something imported it earlier
    cxx, nvcc, link = _compile_flags()
    cpp_sources = sorted(glob.glob("csrc/*.cpp"))

    def cpu_extension():
        return cpp_extension.CppExtension("fr_fast._C", cpp_sources, extra_compile_args={"cxx": cxx},
                                          extra_link_args=link)

    class BuildExtension(cpp_extension.BuildExtension):
        """torch's builder; if the CUDA sources fail to compile it warns and builds the CPU extension, and it
        records the build (torch version, CUDA or why not) in _C.build.json next to the library."""

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as err:
                if not any(source.endswith(".cu") for ext in self.extensions for source in ext.sources):
                    raise
                reason = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
                if cuda_required:
                    raise BuildError(f"FR_FAST_CUDA=1 but the CUDA sources failed to compile: {reason} (pip -v "
                                     "shows the compiler's output)") from err
                build_info.update(cuda=False, cuda_archs=None,
                                  no_cuda=f"the CUDA sources failed to compile: {reason}")
                _warn(f"building without the CUDA kernels: {build_info['no_cuda']} (pip -v shows the "
                      f"compiler's output; {_FIX})")
                self.extensions[:] = [cpu_extension()]
                super().build_extensions()  # adds torch's flags to the new extension

        def run(self):
            super().run()
            out_dir = os.path.dirname(self.get_ext_fullpath("fr_fast._C"))
            with open(os.path.join(out_dir, "_C.build.json"), "w") as f:
                json.dump(build_info, f)

    if cuda_home is not None:
        ext = cpp_extension.CUDAExtension("fr_fast._C", cpp_sources + sorted(glob.glob("csrc/*.cu")),
                                          extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)
    else:
        ext = cpu_extension()
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


# Commands that only package the sources or write the metadata need neither torch nor a compiler.
_SOURCE_ONLY_COMMANDS = {"sdist", "egg_info", "dist_info"}
_BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop", "bdist_egg"}

if __name__ == "__main__":
    from setuptools import find_packages, setup

    args = set(sys.argv[1:])
    source_only = bool(args & _SOURCE_ONLY_COMMANDS) and not args & _BUILD_COMMANDS
    ext_modules, cmdclass = ([], {}) if source_only else _extensions()
    setup(
        # configs/ ships inside the package as fr_fast.configs, so presets resolve by name after a plain install.
        packages=find_packages(include=["fr_fast", "fr_fast.*"]) + ["fr_fast.configs"],
        package_dir={"fr_fast.configs": "configs"},
        # presets, profiles (dataset/, model/, method/) and paper.yaml
        package_data={"fr_fast.configs": ["*.yaml", "*/*.yaml"]},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )
