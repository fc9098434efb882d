"""Prompt templates: turn one example (a mapping of column: value) into a prompt string and an answer string.

Training puts the loss on the answer only; evaluation scores each of
:meth:`ClassificationTemplate.options` as a continuation of the same prompt, so prompts and answers here
are the single source of truth for both.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import datasets

from fedlora.errors import DataError

__all__ = [
    "ClassificationTemplate",
    "InstructionTemplate",
    "MultipleChoiceTemplate",
    "Template",
    "validate_columns",
]


def _placeholders(template: str) -> list[str]:
    """Top-level field names used by a ``str.format`` template (``{a.b}`` / ``{a[0]}`` count as ``a``)."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise DataError(f"prompt template {template!r} is not a valid format string: {exc}") from None
    for _, field, _, _ in parsed:
        if field is None:
            continue
        name = field.split(".", 1)[0].split("[", 1)[0]
        if not name or name.isdigit():
            raise DataError(f"prompt template {template!r}: use named fields like {{text}}, not {{{field}}}")
        if name not in names:
            names.append(name)
    return names


def _render(template: str, fields: Mapping[str, Any], what: str) -> str:
    try:
        return template.format_map(fields)
    except KeyError as exc:
        raise DataError(f"example has no field {exc.args[0]!r} used by the {what} template") from None
    except (IndexError, AttributeError, ValueError) as exc:
        raise DataError(f"{what} template {template!r} cannot be filled from the example: {exc}") from None


def _field(example: Mapping[str, Any], name: str, role: str) -> Any:
    try:
        return example[name]
    except KeyError:
        raise DataError(f"example has no {role} field {name!r} (fields: {', '.join(map(str, example))})") from None


@dataclass(frozen=True)
class ClassificationTemplate:
    """A prompt and a fixed set of label strings; the answer is ``answer_prefix + label``.

    ``prompt`` is a ``str.format`` template over the example's fields, where ``{text}`` always means the
    ``text_field`` column. Label values are matched as strings; an integer value that is not itself one of
    the labels (as a string) is read as an index into ``labels`` (ClassLabel-encoded Hugging Face data).
    """

    labels: tuple[str, ...]
    prompt: str = "Tweet: {text}\nSentiment:"
    text_field: str = "text"
    label_field: str = "label"
    answer_prefix: str = " "

    def __post_init__(self) -> None:
        labels = tuple(str(label) for label in self.labels) if not isinstance(self.labels, str) else ()
        if not labels:
            raise DataError("classification template: 'labels' must be a non-empty list of label strings")
        if len(set(labels)) != len(labels):
            raise DataError(f"classification template: 'labels' has duplicates: {list(labels)}")
        object.__setattr__(self, "labels", labels)
        _placeholders(self.prompt)

    def required_columns(self) -> list[str]:
        """Columns every example must have: text, label and any other prompt placeholder."""
        cols = [self.text_field, self.label_field]
        cols += [name for name in _placeholders(self.prompt) if name != "text" and name not in cols]
        return cols

    def prompt_for(self, example: Mapping[str, Any]) -> str:
        """The prompt for ``example`` (no answer)."""
        fields = dict(example)
        fields["text"] = _field(example, self.text_field, "text")
        return _render(self.prompt, fields, "prompt")

    def label_index(self, example: Mapping[str, Any]) -> int:
        """Index of the example's label in ``labels``."""
        value = _field(example, self.label_field, "label")
        key = str(value).strip() if isinstance(value, str) else value
        if isinstance(key, str) and key in self.labels:
            return self.labels.index(key)
        if isinstance(key, int) and not isinstance(key, bool):
            if str(key) in self.labels:
                return self.labels.index(str(key))
            if 0 <= key < len(self.labels):
                return key
        raise DataError(
            f"label field {self.label_field!r} has unknown value {value!r}; expected one of {list(self.labels)}"
        )

    def answer_for(self, example: Mapping[str, Any]) -> str:
        """The answer string for ``example``, e.g. ``" negative"``."""
        return self.answer_prefix + self.labels[self.label_index(example)]

    def options(self) -> list[str]:
        """The answer strings of all labels, in label order (what evaluation scores)."""
        return [self.answer_prefix + label for label in self.labels]


@dataclass(frozen=True)
class InstructionTemplate:
    """Alpaca-style instruction / input / output; ``prompt_no_input`` is used when the input is empty.

    ``{instruction}`` and ``{input}`` in the prompts mean the ``instruction_field`` and ``input_field``
    columns; other placeholders are filled from the example's fields. The input column is optional.
    """

    instruction_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"
    prompt: str = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    prompt_no_input: str = "### Instruction:\n{instruction}\n\n### Response:\n"

    def __post_init__(self) -> None:
        _placeholders(self.prompt)
        _placeholders(self.prompt_no_input)

    def required_columns(self) -> list[str]:
        """Columns every example must have (the input column is optional)."""
        cols = [self.instruction_field, self.output_field]
        for name in _placeholders(self.prompt) + _placeholders(self.prompt_no_input):
            if name not in ("instruction", "input") and name not in cols:
                cols.append(name)
        return cols

    def prompt_for(self, example: Mapping[str, Any]) -> str:
        """The prompt for ``example`` (no answer)."""
        fields = dict(example)
        fields["instruction"] = _field(example, self.instruction_field, "instruction")
        value = example.get(self.input_field)
        fields["input"] = "" if value is None else value
        has_input = value is not None and str(value).strip() != ""
        return _render(self.prompt if has_input else self.prompt_no_input, fields, "prompt")

    def answer_for(self, example: Mapping[str, Any]) -> str:
        """The output text, unchanged."""
        value = _field(example, self.output_field, "output")
        if value is None:
            raise DataError(f"output field {self.output_field!r} is empty (None)")
        return str(value)


@dataclass(frozen=True)
class MultipleChoiceTemplate:
    """Each example has its own answer options; the answer is ``answer_prefix + options[answer]``.

    ``options_field`` holds a list of option strings and ``answer_field`` the index of the correct one (or the
    correct option's text). ``{input}`` in the prompt means the ``input_field`` column.
    """

    input_field: str = "input"
    options_field: str = "options"
    answer_field: str = "answer"
    prompt: str = "{input}"
    answer_prefix: str = " "

    def __post_init__(self) -> None:
        _placeholders(self.prompt)

    def required_columns(self) -> list[str]:
        cols = [self.input_field, self.options_field, self.answer_field]
        cols += [name for name in _placeholders(self.prompt) if name != "input" and name not in cols]
        return cols

    def prompt_for(self, example: Mapping[str, Any]) -> str:
        fields = dict(example)
        fields["input"] = _field(example, self.input_field, "input")
        return _render(self.prompt, fields, "prompt")

    def options_for(self, example: Mapping[str, Any]) -> list[str]:
        """This example's answer strings, in the example's option order (what evaluation scores)."""
        options = _field(example, self.options_field, "options")
        if isinstance(options, str) or not isinstance(options, list | tuple) or len(options) < 2:
            raise DataError(
                f"options field {self.options_field!r} must be a list of at least 2 strings, got {options!r}"
            )
        return [self.answer_prefix + str(option) for option in options]

    def answer_index(self, example: Mapping[str, Any]) -> int:
        """Index of the correct option."""
        options = self.options_for(example)
        value = _field(example, self.answer_field, "answer")
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(options):
            return value
        if isinstance(value, str) and self.answer_prefix + value in options:
            return options.index(self.answer_prefix + value)
        raise DataError(
            f"answer field {self.answer_field!r} has {value!r}: expected an option index in [0, {len(options)}) "
            "or one of the option strings"
        )

    def answer_for(self, example: Mapping[str, Any]) -> str:
        return self.options_for(example)[self.answer_index(example)]


Template = ClassificationTemplate | InstructionTemplate | MultipleChoiceTemplate


def validate_columns(dataset: datasets.Dataset, template: Template, source_name: str) -> None:
    """Check ``dataset`` has the columns ``template`` needs (and, for classification, only known labels).

    Raises :class:`DataError` naming the source and the missing columns or unknown label values.
    """
    have = list(dataset.column_names)
    missing = [c for c in template.required_columns() if c not in have]
    if missing:
        raise DataError(
            f"data source {source_name}: missing column(s) {', '.join(map(repr, missing))} "
            f"(has {', '.join(map(repr, have))})"
        )
    if isinstance(template, ClassificationTemplate):
        values = dataset.unique(template.label_field)
        if any(v is None for v in values):
            row = dataset[template.label_field].index(None)
            raise DataError(
                f"data source {source_name}: column {template.label_field!r} has missing values (first in row "
                f"{row + 1}); every example needs a label"
            )
        unknown = []
        for value in values:
            try:
                template.label_index({template.label_field: value})
            except DataError:
                unknown.append(value)
        if unknown:
            shown = ", ".join(repr(v) for v in sorted(unknown, key=str)[:5])
            more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
            raise DataError(
                f"data source {source_name}: column {template.label_field!r} has value(s) {shown}{more} "
                f"not in the template's labels {list(template.labels)}"
            )
