"""Building and loading nbllm's own C++ CPU kernels (torch custom ops), once per machine and process.

Each kernel is one C++ source beside its Python module, compiled with g++ (or ``$CXX``) against the
installed torch into ``<nbllm cache>/extensions/<name>-<hash>.so``: the hash covers the source, the
torch version and the flags, so a changed kernel or torch builds anew and a build is shared by every
process on the machine. A library is loaded at most once per process (a second copy defining the
same op would abort it). The kernels use AVX-512 (and AVX-512 BF16); callers check the CPU first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Optional

import torch

from nbllm.default_model import cache_dir

logger = logging.getLogger(__name__)

# -fopenmp: at::parallel_for is inline OpenMP, a serial loop without it
CXX_FLAGS = ("-O3", "-shared", "-fPIC", "-std=c++17", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16",
             "-fopenmp", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")


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


def load_checked(library: Path, source: Path, loaded: Callable[[], bool], register_fake: Callable[[], None],
                 self_check: Callable[[], Optional[str]]) -> Optional[str]:
    """Make a kernel usable in this process: unless `loaded()` says the process has its op already
    (a second library defining it would abort the process), load `library`, building it from `source`
    first where it is missing, and register its fake (meta) implementation; then run `self_check`.
    Returns None when the kernel can be used, else what went wrong (a failed build, load or check)."""
    try:
        if not loaded():
            if not library.exists():
                logger.info("building %s into %s (once per machine)", source.name, library)
                build(source, library)
            torch.ops.load_library(str(library))
            register_fake()
        return self_check()
    except (RuntimeError, OSError) as exc:
        return repr(exc)
