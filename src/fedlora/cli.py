"""``fedlora run CONFIG [key=value ...] --out DIR`` and ``--resume DIR``.

User errors (config, data, model path, run folder) print one line naming the field or file and exit with 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedlora.errors import FedloraError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Federated LoRA fine-tuning.")
console = Console(stderr=True)


class RichReporter:
    """Round and client progress on stderr."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def run_started(self, config, setup, start_round: int) -> None:
        budgets = setup.budgets
        self.console.print(
            f"[bold]fedlora[/] {config.method} · {config.partition.num_clients} clients "
            f"({config.sampling.clients_per_round}/round) · rank {config.lora.rank} · "
            f"budgets {min(budgets)}–{max(budgets)} · rounds {start_round}..{config.rounds}"
        )

    def round_started(self, round_idx: int, participants: list[int]) -> None:
        self.console.print(f"round {round_idx}: clients {participants}")

    def client_done(self, round_idx: int, client_id: int, rank: int, train_loss: float) -> None:
        self.console.print(f"  client {client_id:>3} rank {rank:>3}  train_loss {train_loss:.4f}")

    def round_done(self, record: dict) -> None:
        parts = [f"round {record['round']} done", f"train_loss {record['train_loss']:.4f}"]
        if "eval_loss" in record:
            parts.append(f"eval_loss {record['eval_loss']:.4f}")
        if "eval_accuracy" in record:
            parts.append(f"eval_accuracy {record['eval_accuracy']:.3f}")
        parts += [
            f"↓ {record['bytes_down'] / 1e6:.2f} MB",
            f"↑ {record['bytes_up'] / 1e6:.2f} MB",
            f"sim {record['sim_round_s']:.1f} s",
            f"wall {record['wall_s']:.1f} s",
        ]
        self.console.print("[green]" + " · ".join(parts) + "[/]")

    def evaluated(self, label: str, result: dict) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items())
        self.console.print(f"[cyan]eval {label}: {shown}[/]")


def resume_config(run_dir: Path, config: Path | None, overrides: list[str]):
    """The config to resume with: the run's resolved config, with overrides; only ``rounds`` may change.

    A CONFIG given with --resume must resolve to the same config (again except ``rounds``).
    """
    from fedlora import rundir
    from fedlora.config import load_config

    resolved = run_dir / rundir.CONFIG_FILE
    if not resolved.is_file():
        raise FedloraError(f"{run_dir}: not a fedlora run folder ({resolved} is missing)")
    original = load_config(resolved)
    wanted = load_config(config, overrides) if config is not None else load_config(resolved, overrides)
    a = original.model_dump(exclude={"rounds"})
    b = wanted.model_dump(exclude={"rounds"})
    if a != b:
        field = _first_difference(a, b)
        raise FedloraError(f"--resume {run_dir}: config differs from {resolved} at {field}; only rounds may change")
    return wanted


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in a:
        if a[key] != b.get(key):
            if isinstance(a[key], dict) and isinstance(b.get(key), dict):
                return _first_difference(a[key], b[key], f"{prefix}{key}.")
            return f"{prefix}{key}"
    return prefix.rstrip(".") or "?"


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(help="TOML or YAML config (omit with --resume)")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted key=value overrides")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run folder to create")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="continue the run in this folder")] = None,
) -> None:
    """Run a federated fine-tune and write config, metrics, summary, adapter and checkpoint into the folder."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from fedlora.config import load_config  # light: config errors are reported before torch is imported

    try:
        if resume is not None:
            if out is not None and out.resolve() != resume.resolve():
                raise FedloraError("--out and --resume name different folders; --resume continues in place")
            cfg = resume_config(resume, config, list(overrides or []))
            run_dir = resume
        else:
            if config is None or out is None:
                raise FedloraError("usage: fedlora run CONFIG [key=value ...] --out DIR  (or --resume DIR)")
            cfg = load_config(config, list(overrides or []))
            run_dir = out
        from fedlora import federation

        summary = federation.run(cfg, run_dir, resume=resume is not None, reporter=RichReporter(console))
    except FedloraError as err:
        _fail(err)
    before = summary.get("initial_eval") or {}
    after = summary.get("final_eval") or {}
    if "eval_accuracy" in after:
        console.print(
            f"[bold]held-out accuracy: before {before.get('eval_accuracy', float('nan')):.3f} → "
            f"after {after['eval_accuracy']:.3f}[/]"
        )
    console.print(f"outputs in {run_dir}")


@app.command()
def version() -> None:
    """Print the fedlora version."""
    from fedlora import __version__

    print(__version__)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
