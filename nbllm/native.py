"""Building and loading nbllm's own C++ CPU kernels (torch custom ops), once per machine and process.

Each kernel is one C++ source beside its Python module, compiled with g++ (or ``$CXX``) against the
installed torch into ``<nbllm cache>/extensions/<name>-<hash>.so``: the hash covers the source, the
torch version and the flags, so a changed kernel or torch builds anew and a build is shared by every
process on the machine. A library is loaded at most once per process (a second copy defining the
same op would abort it). The kernels use AVX-512 (and AVX-512 BF16); callers check
`cpu_runs_kernels()` first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from nbllm.default_model import cache_dir
from nbllm.loader import cpu_flags

logger = logging.getLogger(__name__)

# -fopenmp: at::parallel_for is inline OpenMP, a serial loop without it
CXX_FLAGS = ("-O3", "-shared", "-fPIC", "-std=c++17", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16",
             "-fopenmp", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")


# what CXX_FLAGS compile for: a CPU must list all of these in /proc/cpuinfo to run the kernels
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16")


def cpu_runs_kernels() -> bool:
    """Whether this CPU has every instruction set the kernels are compiled for."""
    flags = cpu_flags()
    return flags is not None and all(flag in flags for flag in CPU_FLAGS)


def library_path(source: Path) -> Path:
    """Where `source`'s library for this torch and these flags lives (built or not)."""
    key = hashlib.sha256(source.read_bytes() + " ".join((torch.__version__, *CXX_FLAGS)).encode()).hexdigest()[:16]
    return cache_dir() / "extensions" / f"{source.stem}-{key}.so"


def build(source: Path, target: Path) -> None:
    """Compile `source` into the library `target`; RuntimeError naming the failure."""
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++ or c++; or set CXX)")
    command = [compiler, *CXX_FLAGS, str(source)]
    command += [f"-I{path}" for path in cpp_extension.include_paths()]
    command += [f"-L{path}" for path in cpp_extension.library_paths()]
    command += ["-lc10", "-ltorch_cpu"]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    result = subprocess.run(command + ["-o", str(partial)], capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"compiling {source.name} failed: {result.stderr[-1000:]}")
    os.replace(partial, target)  # another process building at the same time gets a whole file either way


def op_loaded(name: str) -> bool:
    """Whether this process already has the op nbllm::`name` (from any nbllm cache folder)."""
    try:
        getattr(torch.ops.nbllm, name).default
    except (AttributeError, RuntimeError):
        return False
    return True


def kernel_usable(switch: str, library: Path, source: Path, loaded: Callable[[], bool],
                  register_fake: Callable[[], None], self_check: Callable[[], Optional[str]],
                  fallback: str) -> bool:
    """Whether a kernel can be used in this process, making it so where it can.

    False, silently, when the environment variable `switch` is "0" or the CPU lacks the instructions.
    Otherwise, unless `loaded()` says the process has the op already (a second library defining it
    would abort the process): load `library`, building it from `source` first where it is missing,
    and register its fake (meta) implementation; then run `self_check` (None: passed, else what
    differed). A failed build, load or check warns, naming `fallback` (what runs instead) and the
    problem, and gives False."""
    if os.environ.get(switch, "1") == "0" or not cpu_runs_kernels():
        return False
    try:
        if not loaded():
            if not library.exists():
                logger.info("building %s into %s (once per machine)", source.name, library)
                build(source, library)
            torch.ops.load_library(str(library))
            register_fake()
        problem = self_check()
    except (RuntimeError, OSError) as exc:
        problem = repr(exc)
    if problem is not None:
        warnings.warn(f"nbllm: {fallback} ({problem:.300})", RuntimeWarning, stacklevel=3)
        return False
    return True
