"""The registry of methods (``fedlora.methods.registry``): one entry per method answers everything fedlora asks.

- no file of ``src/`` outside the registry and the methods' own modules compares method names (a grep);
- ``method`` accepts registered names only, with one line naming ``method`` and the known names;
- every entry answers DP and secure aggregation with a reason, and the config's DP refusal quotes it;
- a user's method registered from a module outside fedlora (``tests/plugins/toy_mix.py``, named in the config's
  ``plugins``) runs end to end through ``fedlora run``, in-process and on Flower's simulation, and does what it
  says: with ``mix = 1`` it is FedIT exactly, with ``mix = 0.5`` its first round moves B half as far.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedlora import methods
from fedlora.config import dump_config, load_config, validate
from fedlora.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "fedlora"
TINY = ROOT / "examples" / "tiny.toml"
PLUGINS = Path(__file__).resolve().parent / "plugins"
FAST = ["rounds=2", "data.max_examples=48", "train.local_steps=2", "threads=1"]


# ------------------------------------------------------------------------------------- no name comparisons


def _own_modules() -> set[Path]:
    """The files allowed to name methods: the registry, the methods package's index, and each method's module."""
    own = {SRC / "methods" / "registry.py", SRC / "methods" / "__init__.py"}
    for spec in methods.specs():
        module = sys.modules[spec.build.__module__]
        own.add(Path(module.__file__).resolve())
    return own


def name_comparisons(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, text) of every comparison with a method name in ``source``: ``x == "name"``, ``"name" != x``,
    ``x in ("name", ...)``, ``match``/``case "name"``, and literal tuples/lists/sets/dict keys holding two or more
    method names (a list of methods kept outside the registry)."""
    found = []
    tree = ast.parse(source)
    exports = {  # ``__all__`` lists function names (fedlora.aggregation.flora), not methods
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                strings = [operand] if isinstance(operand, ast.Constant) else []
                if isinstance(operand, (ast.Tuple, ast.List, ast.Set)):
                    strings = list(operand.elts)
                if any(isinstance(s, ast.Constant) and s.value in names for s in strings):
                    found.append((node.lineno, ast.unparse(node)))
                    break
        elif isinstance(node, ast.match_case):
            pattern = ast.unparse(node.pattern)
            if any(f"'{n}'" in pattern or f'"{n}"' in pattern for n in names):
                found.append((node.pattern.lineno, pattern))
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and id(node) not in exports:
            elts = node.keys if isinstance(node, ast.Dict) else node.elts
            hits = [e for e in elts if isinstance(e, ast.Constant) and e.value in names]
            if len(hits) >= 2:
                found.append((node.lineno, ast.unparse(node)[:120]))
    return found


def test_nothing_outside_the_registry_compares_method_names():
    """A new ``config.method == "flora"`` (or a list of methods) anywhere in src/ but the registry and the methods'
    own modules fails here: ask the method's registry entry instead."""
    names, own = set(methods.names()), _own_modules()
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.resolve() in own:
            continue
        for line, text in name_comparisons(path.read_text(encoding="utf-8"), names):
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {text}")
    assert not offenders, "method names compared outside the registry:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "line",
    [
        'if config.method == "flora": pass',
        'ok = "hetlora" != config.method',
        'if config.method in ("fedit", "ffa"): pass',
        'FULL = ["fedit", "ffa"]',
        'WHY = {"flora": "a", "florist": "b"}',
        'match m:\n    case "fslora": pass',
    ],
)
def test_the_grep_catches_each_form(line):
    assert name_comparisons(line, set(methods.names()))


def test_the_grep_lets_other_strings_through():
    ok = 'preset: Literal["fslora"] | None = None\nif distribution == "fslora_normal": pass\nname = "hetlora"\n'
    assert name_comparisons(ok, set(methods.names())) == []


# ------------------------------------------------------------------------------------------ the entries


def test_builtins_are_registered_in_the_reports_order():
    assert methods.METHODS[:7] == ("fslora", "florist", "flora", "flexlora", "hetlora", "fedit", "ffa")
    assert {"rolora", "fedsa", "fedex", "fedsb"} <= set(methods.METHODS)  # issue 18's methods join after the seven
    assert set(methods.METHODS) <= set(methods.names())


def test_an_unknown_method_is_one_line_naming_method_and_the_known_names():
    with pytest.raises(ConfigError) as err:
        validate({"method": "fedsgd"})
    text = str(err.value)
    assert "\n" not in text and text.startswith("config: method: ") and "'fedsgd'" in text
    assert all(name in text for name in methods.METHODS)


@pytest.mark.parametrize("name", ["florist", "flora", "flexlora", "hetlora"])
def test_dp_is_refused_with_the_methods_own_reason(name):
    spec = methods.get(name)
    assert not spec.dp.ok and spec.dp.why
    with pytest.raises(ConfigError) as err:
        validate({"method": name, "privacy": {"clip_norm": 1.0}, "server": {"weighting": "uniform"}})
    text = str(err.value)
    assert "privacy.clip_norm" in text and spec.dp.why in text and "fslora, fedit, ffa" in text


def test_every_entry_answers_every_question():
    for spec in methods.specs():
        assert spec.summary and spec.convention.source, spec.name
        assert isinstance(spec.dp, methods.Fit) and spec.dp.why, spec.name
        assert isinstance(spec.secure_aggregation, methods.Fit) and spec.secure_aggregation.why, spec.name
        options = spec.options() if spec.options is not None else None
        assert isinstance(spec.merges(options), bool)


def test_merging_and_rank_behaviour_as_the_papers_say():
    assert [n for n in methods.METHODS if methods.get(n).ranks == "full"] == [
        "fedit",
        "ffa",
        "rolora",
        "fedsa",
        "fedex",
        "fedsb",
    ]
    assert methods.get("fedex").merges(None) and not methods.get("fedsb").merges(None)
    florist = methods.get("florist")
    assert florist.merges(florist.options(handoff="merge")) and not florist.merges(florist.options(handoff="pad"))
    assert methods.get("flora").merges(None) and not methods.get("fslora").merges(None)


def test_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.MethodSpec(**{**methods.get("fedit").__dict__, "summary": "other"}))


# ------------------------------------------------------------------------------------- a user's own method


@pytest.fixture
def toy_plugin(monkeypatch):
    """tests/plugins on sys.path (and on PYTHONPATH, for processes the run starts); the toy unregistered after."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("PYTHONPATH", f"{PLUGINS}:{__import__('os').environ.get('PYTHONPATH', '')}")
    sys.modules.pop("toy_mix", None)
    yield
    methods.unregister("toy_mix")
    sys.modules.pop("toy_mix", None)


def test_a_plugin_that_cannot_be_imported_is_one_line_naming_plugins(toy_plugin):
    with pytest.raises(ConfigError) as err:
        validate({"plugins": ["no_such_module_here"], "method": "toy_mix"})
    assert str(err.value).startswith("plugins: cannot import 'no_such_module_here'") and "\n" not in str(err.value)


def test_plugin_options_are_validated_and_round_trip(toy_plugin, tmp_path):
    config = validate({"plugins": ["toy_mix"], "method": "toy_mix", "toy_mix": {"mix": 0.25}})
    assert config.method_options().mix == 0.25
    text = dump_config(config)
    assert "[toy_mix]" in text and "plugin_options" not in text
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert load_config(path).method_options().mix == 0.25
    with pytest.raises(ConfigError) as err:
        validate({"plugins": ["toy_mix"], "method": "toy_mix", "toy_mix": {"mix": 2}})
    assert "toy_mix.mix" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="toy_mix.mixx: unknown key"):
        validate({"plugins": ["toy_mix"], "method": "toy_mix", "toy_mix": {"mixx": 0.5}})


def _fedlora_run(*args: str) -> None:
    from typer.testing import CliRunner

    from fedlora.cli import app

    result = CliRunner().invoke(app, ["run", *args])
    assert result.exit_code == 0, result.output + (result.stderr or "")


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_users_method_runs_through_fedlora_run_in_process(toy_plugin, tmp_path):
    """mix = 1: exactly FedIT's run (a plugin whose options or builder were ignored would differ at mix = 0.5).
    mix = 0.5 after one round: B (zero at the start) is half of FedIT's, A halfway between the init and FedIT's."""
    plugin = ["plugins=['toy_mix']", "method=toy_mix"]
    _fedlora_run(str(TINY), *FAST, "method=fedit", "--out", str(tmp_path / "fedit"))
    _fedlora_run(str(TINY), *FAST, *plugin, "toy_mix.mix=1.0", "--out", str(tmp_path / "one"))
    fedit, one = _adapter(tmp_path / "fedit"), _adapter(tmp_path / "one")
    assert fedit.keys() == one.keys()
    for key in fedit:
        assert torch.allclose(fedit[key], one[key], rtol=0, atol=1e-6), key
    assert [r["bytes_up"] for r in _records(tmp_path / "one")] == [r["bytes_up"] for r in _records(tmp_path / "fedit")]

    one_round = ["rounds=1", "data.max_examples=48", "train.local_steps=2", "threads=1"]
    _fedlora_run(str(TINY), *one_round, "method=fedit", "--out", str(tmp_path / "fedit1"))
    _fedlora_run(str(TINY), *one_round, *plugin, "toy_mix.mix=0.5", "--out", str(tmp_path / "half"))
    fedit1, half = _adapter(tmp_path / "fedit1"), _adapter(tmp_path / "half")
    b_keys = [k for k in fedit1 if "lora_B" in k]
    assert b_keys and all(fedit1[k].abs().max() > 1e-4 for k in b_keys)  # the round moved B: the check has teeth
    for key in b_keys:
        assert torch.allclose(half[key], 0.5 * fedit1[key], rtol=0, atol=1e-6), key
    summary = json.loads((tmp_path / "half" / "summary.json").read_text())
    assert summary["method"] == "toy_mix"
    assert load_config(tmp_path / "half" / "config.resolved.toml").method_options().mix == 0.5


@pytest.mark.skipif(not __import__("importlib").util.find_spec("flwr"), reason="needs flwr")
def test_a_users_method_runs_on_flower_sim_like_in_process(toy_plugin, tmp_path):
    """The same plugin on Flower's simulation (the nodes load the config, so they import the plugin too): the
    in-process adapter (allclose 1e-6) and bytes."""
    plugin = ["plugins=['toy_mix']", "method=toy_mix", "toy_mix.mix=0.5"]
    _fedlora_run(str(TINY), *FAST, *plugin, "--out", str(tmp_path / "inprocess"))
    _fedlora_run(str(TINY), *FAST, *plugin, "engine=flower-sim", "--out", str(tmp_path / "flower"))
    a, b = _adapter(tmp_path / "flower"), _adapter(tmp_path / "inprocess")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), key
    fr, ir = _records(tmp_path / "flower"), _records(tmp_path / "inprocess")
    assert [(r["bytes_up"], r["bytes_down"]) for r in fr] == [(r["bytes_up"], r["bytes_down"]) for r in ir]
    assert re.search(r'method = "toy_mix"', (tmp_path / "flower" / "config.resolved.toml").read_text())


# ------------------------------------------------------------------------------------------------- docs


def test_the_docs_method_list_is_the_registrys():
    """docs/methods.md's table is ``method_table()`` of the built-ins (regenerate it with ``fedlora methods``)."""
    text = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    table = text.split("<!-- methods:begin -->\n", 1)[1].split("\n<!-- methods:end -->", 1)[0]
    assert set(methods.names()) == set(methods.METHODS)  # no toy left registered by another test
    assert table == methods.registry.method_table()


def test_the_docs_worked_example_is_the_plugin_the_tests_run():
    text = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    section = text.split("## Adding your own method", 1)[1]
    example = section.split("```python\n", 1)[1].split("\n```", 1)[0]
    assert example == (PLUGINS / "toy_mix.py").read_text(encoding="utf-8").rstrip()
