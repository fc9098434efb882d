"""tests/optional.py: a missing optional dependency skips on a developer's machine and fails in CI."""

import pytest
from optional import require

MISSING = "fedlora_no_such_module_xyz"


def test_a_missing_module_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require(MISSING)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require(MISSING)


@pytest.mark.parametrize("value", ["true", "1", "yes", "True"])
def test_a_missing_module_fails_in_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(ImportError, match=f"CI: the tests need the optional dependency '{MISSING}'"):
        require(MISSING)


def test_a_present_module_is_returned(monkeypatch):
    for value in ("true", ""):
        monkeypatch.setenv("CI", value)
        assert require("json").dumps([1]) == "[1]"
