"""Optional dependencies of a test file: skipped on a developer's machine without them, a failure in CI.

``require("flwr")`` is ``pytest.importorskip("flwr")`` except when the environment variable ``CI`` is set (to
anything but "", "0", "false" or "no"): then a missing module raises ImportError, so the file errors instead of
silently skipping (CI installs every extra; a skip there hides a broken install).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(module: str) -> ModuleType:
    """The imported ``module``; if it is missing, skip the calling test or file (failure in CI)."""
    if in_ci():
        try:
            return importlib.import_module(module)
        except ImportError as err:
            raise ImportError(
                f"CI: the tests need the optional dependency {module!r}, which is missing: {err}"
            ) from err
    return pytest.importorskip(module)
