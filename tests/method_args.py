"""Overrides that select a method on a test config: ``method=...``, and for the methods that refuse mixed client
budgets (FedEx-LoRA, Fed-SB) one budget per client equal to lora.rank (examples/tiny.toml has mixed budgets)."""

from pathlib import Path

from fedlora.config import load_config

MIXED_BUDGETS_REFUSED = ("fedex", "fedsb")
"""The methods whose builders refuse mixed budgets.per_client (one shared rank in their papers)."""


def method_args(method: str, config: Path, *overrides: str) -> list[str]:
    """``[*overrides, "method=<method>"]`` plus ``budgets.per_client=[r, …, r]`` for the same-rank methods."""
    args = [*overrides, f"method={method}"]
    if method in MIXED_BUDGETS_REFUSED:
        base = load_config(config, [a for a in overrides if not a.startswith("budgets.")])
        args.append(f"budgets.per_client={[base.lora.rank] * base.partition.num_clients}")
    return args
