"""Property tests (hypothesis) over the input loaders: whatever a user hands them, the config loader returns a valid
RunConfig or raises ConfigError, and the data loaders return examples or raise DataError naming the file; no
other exception escapes (it would reach the user as a traceback).

Budgets are modest (max_examples 60-150, no deadline) so the suite stays fast.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import datasets
import pytest
import tomli_w
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from fedlora.config import RunConfig, load_config
from fedlora.data.sources import load_source
from fedlora.errors import ConfigError, DataError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _field_paths(model: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config model (sections and fields), e.g. "train.lr"."""
    paths = []
    for name, info in model.model_fields.items():
        paths.append(prefix + name)
        annotation = info.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            paths += _field_paths(annotation, f"{prefix}{name}.")
    return paths


KEYS = _field_paths(RunConfig)
LEAVES = [k for k in KEYS if "." in k and not any(other.startswith(k + ".") for other in KEYS)]
"""Real keys, so the fuzzer reaches value validation and the cross-field checks, not only 'unknown key'."""

names = st.one_of(st.sampled_from([k.rsplit(".", 1)[-1] for k in KEYS]), st.text(min_size=0, max_size=8))
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["fslora", "fedit", "florist", "uniform", "independent", "tiny-random", "iid", "wireless"]),
)
toml_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(names, inner, max_size=4)),
    max_leaves=12,
)


def _nested(flat: dict[str, object]) -> dict:
    """{"train.lr": 1} → {"train": {"lr": 1}}; a key that is both a value and a section keeps the first."""
    data: dict = {}
    for key, value in flat.items():
        node, parts = data, key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node.setdefault(parts[-1], value)
    return data


configs = st.builds(_nested, st.dictionaries(st.sampled_from(KEYS), toml_values, max_size=8))


def _loads_or_config_error(path: Path, overrides: list[str] | None = None) -> RunConfig | None:
    try:
        config = load_config(path, overrides)
    except ConfigError as err:
        assert "\n" not in str(err), str(err)
        event("ConfigError")
        return None
    event("valid config")
    assert isinstance(config, RunConfig)
    RunConfig.model_validate(config.model_dump())  # what it returns is itself valid
    return config


@FUZZ
@given(data=configs)
def test_random_toml_configs_load_or_raise_config_error(data):
    try:
        text = tomli_w.dumps(data)
    except (TypeError, ValueError):  # tomli_w refuses some values (e.g. mixed-type arrays in old TOML)
        assume(False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.toml"
        path.write_text(text, encoding="utf-8")
        _loads_or_config_error(path)


@FUZZ
@given(data=configs)
def test_random_yaml_configs_load_or_raise_config_error(data):
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        _loads_or_config_error(path)


TINY = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"
plausible = st.one_of(
    st.integers(-2, 12),
    st.floats(-0.5, 2.0),
    st.sampled_from(["fslora", "flexlora", "independent", "wireless", "min_max", "natural", "cosine", "adam", "pad"]),
    st.lists(st.integers(0, 9), min_size=1, max_size=5),
    st.lists(st.floats(0.0, 1.5), min_size=4, max_size=4),
    st.fixed_dictionaries({"dist": st.sampled_from(["uniform", "loguniform", "lognormal", "choice", "x"])}).flatmap(
        lambda d: st.fixed_dictionaries(
            {**{k: st.just(v) for k, v in d.items()}},
            optional={
                "low": st.floats(-1, 5),
                "high": st.floats(-1, 50),
                "median": st.floats(-1, 50),
                "sigma": st.floats(-1, 2),
                "values": st.lists(st.floats(0, 9), max_size=3),
                "weights": st.lists(st.floats(-1, 2), max_size=3),
            },
        )
    ),
)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(LEAVES), plausible, min_size=1, max_size=3))
def test_mutated_tiny_config_loads_or_raises_config_error(changes):
    """examples/tiny.toml with 1-3 fields set to plausible values: many stay valid (cross-field checks, fleet
    draws), the rest must be ConfigErrors."""
    import tomllib

    data = tomllib.loads(TINY.read_text())
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        node = data
        for part in section.split("."):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[name] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutated.toml"
        path.write_text(tomli_w.dumps(data))
        _loads_or_config_error(path)


override_keys = st.one_of(st.sampled_from(KEYS), st.text(string.ascii_letters + "._=-", max_size=12))
override_values = st.one_of(
    st.text(max_size=16),
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "-inf", "[1,2]", "[]", "{}", "true", '"x"', "[0.5, 2]", "{a = 1}", "1e400"]),
)


@FUZZ
@given(items=st.lists(st.tuples(override_keys, override_values), max_size=5), junk=st.lists(st.text(), max_size=2))
def test_random_overrides_load_or_raise_config_error(items, junk):
    overrides = [f"{key}={value}" for key, value in items if not key.startswith("plan")] + junk
    assume(not any(o.partition("=")[0].strip() == "plan" for o in overrides))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "base.toml"
        path.write_text('[model]\nname = "tiny-random"\n')
        _loads_or_config_error(path, overrides)


@FUZZ
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".toml", ".yaml", ".yml", ".json"]))
def test_random_bytes_as_a_config_file(content, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(content)
        _loads_or_config_error(path)


@FUZZ_SLOW
@given(content=st.binary(max_size=300), settings_=configs)
def test_random_plan_files(content, settings_):
    """A plan file of random bytes, or a well-formed one with random settings."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "c.toml"
        config.write_text('[model]\nname = "tiny-random"\n')
        raw = Path(tmp) / "raw.plan.toml"
        raw.write_bytes(content)
        _loads_or_config_error(config, [f"plan={raw}"])
        flat = {
            f"{section}.{key}": value
            for section, table in settings_.items()
            if isinstance(table, dict)
            for key, value in table.items()
        }
        try:
            text = tomli_w.dumps({"made_for": {"num_clients": 10}, "settings": flat})
        except (TypeError, ValueError):
            return
        plan = Path(tmp) / "p.plan.toml"
        plan.write_text(text)
        _loads_or_config_error(config, [f"plan={plan}"])


# ------------------------------------------------------------------------------------------------- data


def _loads_or_data_error(path: Path) -> datasets.Dataset | None:
    try:
        ds = load_source(str(path))
    except DataError as err:
        message = str(err)
        assert path.name in message and "\n" not in message, message
        event("DataError")
        return None
    event("examples")
    assert isinstance(ds, datasets.Dataset) and len(ds) >= 1
    return ds


@FUZZ
@given(content=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".json", ".jsonl", ".parquet"]))
def test_random_bytes_as_a_data_file(content, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        _write_and_load(Path(tmp) / f"data{suffix}", content)


def _write_and_load(path: Path, content: bytes) -> datasets.Dataset | None:
    path.write_bytes(content)
    return _loads_or_data_error(path)


ENCODINGS = ["utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16", "utf-32"]
cells = st.one_of(
    st.text(max_size=10),
    st.text(alphabet=',"\n\r\t ;|\\', max_size=6),
    st.integers().map(str),
    st.floats().map(str),
)


@FUZZ
@given(
    header=st.lists(cells, min_size=1, max_size=4),
    rows=st.lists(st.lists(cells, max_size=5), max_size=8),
    encoding=st.sampled_from(ENCODINGS),
    quote=st.booleans(),
)
@example(header=["", ""], rows=[["-9223372036854775809"]], encoding="utf-8", quote=False)  # beyond int64
def test_random_csv_text_in_any_encoding(header, rows, encoding, quote):
    def line(values: list[str]) -> str:
        return ",".join('"' + v.replace('"', '""') + '"' if quote else v for v in values)

    text = "\n".join([line(header), *(line(r) for r in rows)]) + "\n"
    try:
        content = text.encode(encoding)
    except UnicodeEncodeError:
        content = text.encode(encoding, errors="replace")
    with tempfile.TemporaryDirectory() as tmp:
        ds = _write_and_load(Path(tmp) / "data.csv", content)
    if ds is not None and encoding in ("utf-16", "utf-32"):
        pytest.fail("a UTF-16/32 file was read as UTF-8")


json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.text(max_size=8)
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=10,
)


@FUZZ
@given(
    records=st.lists(json_values, max_size=6),
    as_lines=st.booleans(),
    encoding=st.sampled_from(ENCODINGS),
    suffix=st.sampled_from([".json", ".jsonl"]),
)
def test_random_json_records_in_any_encoding(records, as_lines, encoding, suffix):
    if as_lines:
        text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in records)
    else:
        text = json.dumps(records, allow_nan=True)
    with tempfile.TemporaryDirectory() as tmp:
        ds = _write_and_load(Path(tmp) / f"data{suffix}", text.encode(encoding, errors="replace"))
    if ds is not None:  # loaded: the records were objects (one JSON line holding a list is a JSON list too)
        rows = records[0] if as_lines and len(records) == 1 and isinstance(records[0], list) else records
        assert rows and all(isinstance(r, dict) for r in rows) and len(ds) == len(rows)


@FUZZ
@given(
    rows=st.lists(
        st.fixed_dictionaries({"text": st.text(max_size=20), "label": st.sampled_from(["a", "b", "ü", " c "])}),
        min_size=1,
        max_size=8,
    )
)
def test_jsonl_of_any_unicode_text_round_trips(rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        ds = _loads_or_data_error(path)
    assert ds is not None and ds["text"] == [r["text"] for r in rows] and ds["label"] == [r["label"] for r in rows]


@FUZZ_SLOW
@given(
    columns=st.dictionaries(
        st.text(min_size=1, max_size=5),
        st.lists(st.one_of(st.none(), st.text(max_size=5)), min_size=0, max_size=5),
        min_size=1,
        max_size=3,
    )
)
def test_random_parquet_tables(columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = min(len(v) for v in columns.values())
    table = pa.table({k: pa.array(v[:n], type=pa.string()) for k, v in columns.items()})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.parquet"
        pq.write_table(table, path)
        ds = _loads_or_data_error(path)
    if n == 0:
        assert ds is None
    elif not any("\x00" in name for name in columns):  # a NUL in a column name is refused, with the file named
        assert ds is not None and len(ds) == n and ds.column_names == list(columns)
