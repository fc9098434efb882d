"""Multiple-choice scoring on a model whose logits are known, per-example options, determinism, bigbench data."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedlora.data.sources import bigbench_task_path, load_bigbench, load_source
from fedlora.data.templates import MultipleChoiceTemplate
from fedlora.errors import DataError
from fedlora.evaluation.heldout import evaluate_heldout, task_accuracy
from fedlora.evaluation.scoring import choice_logprobs, multiple_choice_accuracy, option_logprobs

# ------------------------------------------------------------------ a bigram model with hand-set log-probabilities
WORDS = ["<bos>", "<pad>", "the", "cat", "dog", "sat", "ran", "flew", "down", "away", "up", "fast"]
ID = {w: i for i, w in enumerate(WORDS)}


class WordTokenizer:
    """Splits on spaces; ``tokenizer(text)`` adds a BOS id, ``add_special_tokens=False`` does not."""

    pad_token_id = ID["<pad>"]
    bos_token_id = ID["<bos>"]
    eos_token_id = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [ID[w] for w in text.split()]
        return {"input_ids": ([ID["<bos>"]] if add_special_tokens else []) + ids}


class BigramLM(nn.Module):
    """logits[t] = TABLE[input_ids[t]]: the next token depends only on the current one, so every option's
    log-likelihood is a sum of entries of log_softmax(TABLE) that a test can write down."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone(), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object):
        return type("Out", (), {"logits": self.table[input_ids]})()


def bigram(entries: dict[tuple[str, str], float]) -> tuple[BigramLM, torch.Tensor]:
    """A bigram model with logit ``entries[(a, b)]`` for b after a (-5 elsewhere), and its log-prob table."""
    table = torch.full((len(WORDS), len(WORDS)), -5.0)
    for (a, b), value in entries.items():
        table[ID[a], ID[b]] = value
    return BigramLM(table), table.log_softmax(dim=-1).double()


@pytest.fixture
def cat_model():
    return bigram(
        {
            ("cat", "sat"): 3.0,
            ("cat", "ran"): 2.0,
            ("cat", "flew"): 0.5,
            ("dog", "ran"): 3.0,
            ("dog", "sat"): 0.5,
            ("ran", "away"): 0.0,
            ("ran", "up"): 0.0,
            ("ran", "fast"): 0.0,
            ("sat", "down"): 0.0,
            ("flew", "up"): 5.0,
            ("up", "fast"): 5.0,
        }
    )


def test_single_token_options_score_the_known_log_probabilities(cat_model):
    model, logp = cat_model
    tok = WordTokenizer()
    scores = option_logprobs(model, tok, ["the cat", "the dog"], [" sat", " ran", " flew"])
    expected = torch.tensor(
        [[logp[ID[animal], ID[w]].item() for w in ("sat", "ran", "flew")] for animal in ("cat", "dog")],
        dtype=torch.float64,
    )
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)
    accuracy, picks = multiple_choice_accuracy(
        model, tok, ["the cat", "the dog"], [[" sat", " ran", " flew"]] * 2, [0, 1]
    )
    assert picks.tolist() == [0, 1] and accuracy == 1.0


def test_multi_token_options_sum_and_length_normalisation_change_the_pick(cat_model):
    model, logp = cat_model
    tok = WordTokenizer()
    options = [" ran away", " flew up fast"]
    summed = option_logprobs(model, tok, ["the cat"], options)[0]
    c, r, a, f, u, fa = (ID[w] for w in ("cat", "ran", "away", "flew", "up", "fast"))
    want_sum = [logp[c, r] + logp[r, a], logp[c, f] + logp[f, u] + logp[u, fa]]
    torch.testing.assert_close(summed, torch.tensor(want_sum, dtype=torch.float64), rtol=0, atol=1e-6)
    # summed: "ran away" wins; per token: "flew up fast" (two near-certain tokens after one unlikely one) wins
    assert want_sum[0] > want_sum[1] and want_sum[1] / 3 > want_sum[0] / 2
    _, picks = multiple_choice_accuracy(model, tok, ["the cat"], [options], [0])
    _, picks_norm = multiple_choice_accuracy(model, tok, ["the cat"], [options], [1], length_normalize=True)
    assert picks.tolist() == [0] and picks_norm.tolist() == [1]


def test_each_prompt_scores_its_own_options(cat_model):
    model, logp = cat_model
    tok = WordTokenizer()
    prompts = ["the cat", "the dog", "the cat"]
    options = [[" flew", " sat"], [" sat", " ran", " flew"], [" flew", " sat"]]
    scores = choice_logprobs(model, tok, prompts, options)
    assert [len(s) for s in scores] == [2, 3, 2]
    torch.testing.assert_close(scores[1][1], logp[ID["dog"], ID["ran"]], rtol=0, atol=1e-6)
    accuracy, picks = multiple_choice_accuracy(model, tok, prompts, options, [1, 1, 0])
    assert picks.tolist() == [1, 1, 1] and accuracy == pytest.approx(2 / 3)


def test_ties_go_to_the_first_option_and_bad_gold_is_rejected():
    model, _ = bigram({})  # every continuation equally likely
    tok = WordTokenizer()
    _, picks = multiple_choice_accuracy(model, tok, ["the cat"], [[" sat", " ran"]], [1])
    assert picks.tolist() == [0]
    with pytest.raises(ValueError, match="gold index 2"):
        multiple_choice_accuracy(model, tok, ["the cat"], [[" sat", " ran"]], [2])


def test_task_accuracy_groups_by_task():
    assert task_accuracy(["b", "a", "b"], [1, 0, 0], [1, 1, 1]) == {"a": 0.0, "b": 0.5}


# ---------------------------------------------------------------------------------- determinism on a real model
def test_heldout_evaluation_is_bit_identical_across_calls_and_fresh_models():
    from fedlora.models import tiny_random_llama
    from fedlora.setup import eval_set_for

    rows = [
        {
            "task": "t1" if i % 2 else "t2",
            "input": f"Question {i}: pick one",
            "options": ["yes", "no", "maybe so"],
            "answer": i % 3,
        }
        for i in range(10)
    ]
    results = []
    for _ in range(2):
        model, tok = tiny_random_llama(seed=3)
        eval_set = eval_set_for(MultipleChoiceTemplate(), rows, tok, 64)
        results.append(evaluate_heldout(model, tok, eval_set, 4, tok.pad_token_id))
        results.append(evaluate_heldout(model, tok, eval_set, 4, tok.pad_token_id))
    assert results[0] == results[1] == results[2] == results[3]
    assert set(results[0]) == {"eval_loss", "eval_perplexity", "eval_accuracy", "eval_task_accuracy"}
    assert results[0]["eval_perplexity"] == pytest.approx(math.exp(results[0]["eval_loss"]))
    assert set(results[0]["eval_task_accuracy"]) == {"t1", "t2"}


# ------------------------------------------------------------------------------------- bigbench from the package
def test_bigbench_multiple_choice_rows_follow_the_task_file():
    import json

    ds = load_bigbench(["sports_understanding", "navigate"], "multiple_choice", max_per_task=20, seed=1)
    assert ds.column_names == ["task", "input", "options", "answer"]
    assert ds["task"].count("sports_understanding") == 20 and ds["task"].count("navigate") == 20
    spec = json.loads(bigbench_task_path("sports_understanding").read_text())
    by_input = {ex["input"]: ex for ex in spec["examples"]}
    row = ds[0]
    assert row["input"].startswith(spec["task_prefix"])
    original = next(ex for text, ex in by_input.items() if text in row["input"])
    scores = list(original["target_scores"].values())
    assert row["options"] == list(original["target_scores"]) and row["answer"] == scores.index(max(scores))
    again = load_bigbench(["sports_understanding", "navigate"], "multiple_choice", max_per_task=20, seed=1)
    assert again["input"] == ds["input"]


def test_bigbench_instruction_rows_and_bad_task_names():
    ds = load_source("bigbench", tasks=["sports_understanding"], kind="instruction", max_per_task=5)
    assert ds.column_names == ["task", "instruction", "input", "output"] and all(ds["output"])
    with pytest.raises(DataError, match="data.tasks: no bigbench task 'no_such_task'"):
        load_bigbench(["no_such_task"])
    with pytest.raises(DataError, match="its subtasks are abstract_narrative_understanding:"):
        load_bigbench(["abstract_narrative_understanding"])
    assert len(load_bigbench(["abstract_narrative_understanding:4_distractors"], max_per_task=3)) == 3
    with pytest.raises(DataError, match="programmatic"):
        load_bigbench(["boolean_expressions"])
    with pytest.raises(DataError, match="data.tasks"):
        load_bigbench(["../etc"])
    with pytest.raises(DataError, match="data.task"):
        load_bigbench(["navigate"], "regression")


def test_bigbench_classification_rows_are_the_raw_inputs_and_their_best_labels():
    import json

    tasks = ["multiemo:hotels_sentence_en", "multiemo:reviews_sentence_en"]
    ds = load_source("bigbench", tasks=tasks, kind="classification", max_per_task=40, seed=3)
    assert ds.column_names == ["task", "text", "label"]
    assert ds["task"].count(tasks[0]) == 40 and ds["task"].count(tasks[1]) == 40
    for task in tasks:
        spec = json.loads(bigbench_task_path(task).read_text())
        best = {ex["input"]: max(ex["target_scores"], key=ex["target_scores"].get) for ex in spec["examples"]}
        rows = [row for row in ds if row["task"] == task]
        assert all(row["label"] == best[row["text"]] for row in rows)  # the raw input, not bigbench's prompt
    assert set(ds["label"]) <= {"ambivalent", "negative", "neutral", "positive"} and len(set(ds["label"])) > 1
    with pytest.raises(DataError, match="data.tasks: bigbench task 'navigate' has an example with labels"):
        load_bigbench(["multiemo:hotels_sentence_en", "navigate"], "classification", max_per_task=5)
    with pytest.raises(DataError, match="'social_iqa' has an example with labels .*one label set"):
        load_bigbench(["social_iqa"], "classification")
    with pytest.raises(DataError, match="'social_iqa' has an example with labels"):  # whatever subset is kept
        load_bigbench(["social_iqa"], "classification", max_per_task=1)


def tiny_run_one_task_per_client(run_dir, overrides: list[str]) -> dict:
    """examples/tiny.toml on two bigbench tasks, one per client (natural split by task), one round of one step;
    ``overrides`` give the tasks, the data kind and the rest. Returns the run's summary."""
    from pathlib import Path

    from fedlora import federation
    from fedlora.config import load_config

    tiny = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"
    common = [
        'data.source="bigbench"',
        "partition.num_clients=2",
        'partition.scheme="natural"',
        'partition.key="task"',
        "sampling.clients_per_round=2",
        "fleet.tokens_per_s=100",
        "fleet.distance_m=100",
        "budgets.per_client=[2, 4]",
        "rounds=1",
        "train.local_steps=1",
    ]
    return federation.run(load_config(tiny, [*common, *overrides]), run_dir)


@pytest.mark.parametrize("method", ["fslora", "fedsa"])  # fedsa: also each client's own model, per task
def test_tiny_encoder_run_on_bigbench_classification_split_by_domain(tmp_path, method):
    overrides = [
        'model.name="tiny-random-bert"',
        'model.target_modules=["query","value"]',
        'data.task="classification"',
        'data.tasks=["multiemo:hotels_sentence_en", "multiemo:medicine_sentence_en"]',
        "data.max_per_task=40",
        "data.eval_size=16",
        f"method={method}",
    ]
    summary = tiny_run_one_task_per_client(tmp_path / "run", overrides)
    assert 0.0 <= summary["final_eval"]["eval_accuracy"] <= 1.0
    if method == "fedsa":
        # each client's own model is scored too; its per-task figures are a dict (this crashed the run before)
        assert 0.0 <= summary["final_eval"]["personal_eval_accuracy"] <= 1.0
    # one domain per client, sorted by name; tiny.toml keeps 72 of the 80 sentences and holds 16 out
    counts = [c["label_counts"] for c in summary["clients"]]
    assert sum(sum(c.values()) for c in counts) == 56 and all(sum(c.values()) > 10 for c in counts)
    assert [list(c) for c in counts] == [["multiemo:hotels_sentence_en"], ["multiemo:medicine_sentence_en"]]


def test_bigbench_missing_package_is_one_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bigbench" else real(name, *a))
    with pytest.raises(DataError, match="pip install --no-deps bigbench"):
        load_bigbench(["navigate"])


def test_multiple_choice_template_reads_index_or_text():
    template = MultipleChoiceTemplate()
    example = {"input": "Q?", "options": ["yes", "no"], "answer": "no"}
    assert template.answer_index(example) == 1 and template.answer_for(example) == " no"
    assert template.prompt_for(example) == "Q?"
    with pytest.raises(DataError, match="answer field 'answer'"):
        template.answer_index({**example, "answer": 5})
    with pytest.raises(DataError, match="options field 'options'"):
        template.options_for({**example, "options": "yes"})


# --------------------------------------------------------------------------------- a federated run on bigbench
def test_tiny_run_on_a_bigbench_mixture_reports_accuracy_per_task(tmp_path):
    import json

    overrides = [
        'data.task="multiple_choice"',
        'data.tasks=["sports_understanding", "navigate"]',
        "data.max_per_task=30",
        "data.eval_size=12",
        "eval.length_normalize=true",
    ]
    summary = tiny_run_one_task_per_client(tmp_path / "run", overrides)
    final = summary["final_eval"]
    assert set(final["eval_task_accuracy"]) == {"navigate", "sports_understanding"}
    assert 0.0 <= final["eval_accuracy"] <= 1.0 and math.isfinite(final["eval_perplexity"])
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["eval_task_accuracy"] == final["eval_task_accuracy"]
    # one task per client, sorted by name; the held-out set is stratified by task: 6 of each task's 30
    assert [c["label_counts"] for c in summary["clients"]] == [{"navigate": 24}, {"sports_understanding": 24}]


def test_bigbench_config_needs_task_names():
    from pathlib import Path

    from fedlora.config import load_config
    from fedlora.errors import ConfigError

    tiny = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"
    with pytest.raises(ConfigError, match="tasks"):
        load_config(tiny, ['data.source="bigbench"'])
    with pytest.raises(ConfigError, match="tasks"):
        load_config(tiny, ['data.tasks=["navigate"]'])


# ------------------------------------------------------------------------------ fedlora eval on an exported adapter
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    from pathlib import Path

    from fedlora import federation
    from fedlora.config import load_config

    tiny = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"
    root = tmp_path_factory.mktemp("eval-runs")
    runs = {}
    for method in ("fslora", "florist"):
        config = load_config(tiny, [f"method={method}", "rounds=2", "data.max_examples=48", "train.local_steps=2"])
        runs[method] = (root / method, federation.run(config, root / method))
    return runs


def _cli(*args: str):
    from typer.testing import CliRunner

    from fedlora.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("method", ["fslora", "florist"])
def test_fedlora_eval_of_the_exported_adapter_gives_the_runs_final_numbers(tiny_runs, method, tmp_path):
    import json

    run_dir, summary = tiny_runs[method]
    out = tmp_path / "eval.json"
    result = _cli("eval", str(run_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    final = summary["final_eval"]
    assert metrics["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-5)
    # the loss moved in training by ≥ 100× that tolerance (≈ 0.1 of 5.4 here, ≈ 2000×)
    assert abs(final["eval_loss"] - summary["initial_eval"]["eval_loss"]) >= 100 * 1e-5 * final["eval_loss"]
    assert metrics["eval_accuracy"] == final["eval_accuracy"]
    base = _cli("eval", str(run_dir), "--base-only")
    assert base.exit_code == 0, base.output
    base_metrics = json.loads(base.stdout[base.stdout.index("{") :])
    assert base_metrics["eval_loss"] == pytest.approx(summary["initial_eval"]["eval_loss"], rel=1e-6)


@pytest.mark.parametrize("method", ["fslora", "florist"])
def test_fedlora_eval_scores_the_runs_final_model(tiny_runs, method, monkeypatch):
    """The model ``fedlora eval`` builds (base + PEFT adapter, as a user would load it) gives fedlora's own final
    model's logits on every held-out prompt token to 1e-5, and training moved those logits from the base by
    ≥ 1000× that (an adapter dropped, or FLoRIST's merged base updates left out, fails)."""
    from fedlora import federation
    from fedlora.evaluation import standalone
    from fedlora.setup import load_model

    run_dir, _ = tiny_runs[method]
    seen = {}

    def capture(model, tokenizer, eval_set, *args, **kwargs):
        seen["model"], seen["eval_set"] = model, eval_set
        return evaluate_heldout(model, tokenizer, eval_set, *args, **kwargs)

    monkeypatch.setattr(standalone, "evaluate_heldout", capture)
    assert _cli("eval", str(run_dir)).exit_code == 0
    ours, _, config = federation.load_final_model(run_dir)
    base, _, _ = load_model(config, run_dir, resume=True)
    ids = [torch.tensor([ex["input_ids"]]) for ex in seen["eval_set"].encoded[:6]]
    moved = 0.0
    for x in ids:
        with torch.no_grad():
            theirs, mine, plain = seen["model"](input_ids=x).logits, ours(input_ids=x).logits, base(input_ids=x).logits
        torch.testing.assert_close(theirs, mine, rtol=0, atol=1e-5)
        moved = max(moved, float((mine - plain).abs().max()))
    assert moved >= 1000 * 1e-5


def test_fedlora_eval_bad_inputs_are_one_line_and_exit_2(tiny_runs, tmp_path):
    run_dir, _ = tiny_runs["fslora"]
    missing = _cli("eval", str(tmp_path / "nope"))
    assert missing.exit_code == 2 and "config.resolved.toml: not found" in missing.output
    no_adapter = _cli("eval", str(run_dir), "--adapter", str(tmp_path))
    assert no_adapter.exit_code == 2 and "not a PEFT adapter folder" in no_adapter.output
    bad_key = _cli("eval", str(run_dir), "data.nonsense=1")
    assert bad_key.exit_code == 2 and "nonsense" in bad_key.output


def test_loading_the_adapter_raises_no_library_warning(tiny_runs):
    """fedlora's own PEFT call with every warning an error: PEFT 0.21 reads transformers' deprecated
    ``is_gradient_checkpointing`` (a FutureWarning `fedlora eval` printed), filtered where fedlora calls PEFT."""
    import warnings

    import peft  # noqa: F401 - imported before the filter: only the call is under test

    from fedlora.evaluation.standalone import attach_adapter, run_config
    from fedlora.setup import load_model

    run_dir, _ = tiny_runs["fslora"]
    model, _, _ = load_model(run_config(run_dir), run_dir, resume=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attach_adapter(model, run_dir / "adapter")


def test_fedlora_eval_prints_no_library_warning(tiny_runs):
    """`fedlora eval` in a real process (default warning filters, as a user runs it): stderr holds no warning."""
    import os
    import subprocess
    import sys

    run_dir, _ = tiny_runs["fslora"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "fedlora.cli", "eval", str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,  # ≈ 15 s on an idle machine; the 2 shared cores can be far slower
    )
    assert result.returncode == 0, result.stderr
    noisy = [line for line in result.stderr.splitlines() if "warn" in line.lower() or "kernels" in line]
    assert not noisy, noisy
