"""``fedlora run CONFIG [key=value ...] --out DIR`` and ``--resume DIR``; ``fedlora plan``; ``fedlora report``.

User errors (config, data, model path, run folder) print one line naming the field or file and exit with 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

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
        for failure in record.get("failures", []):
            self.console.print(f"  [yellow]client {failure['client']:>3} failed: {escape(failure['reason'])}[/]")
        if "skipped" in record:
            self.console.print(f"  [yellow]global model unchanged: {record['skipped']}[/]")
        parts = [f"round {record['round']} done"]
        if record["train_loss"] is not None:  # None: nobody joined (independent sampling)
            parts.append(f"train_loss {record['train_loss']:.4f}")
        if "eval_loss" in record:
            parts.append(f"eval_loss {record['eval_loss']:.4f}")
        if "eval_accuracy" in record:
            parts.append(f"eval_accuracy {record['eval_accuracy']:.3f}")
        if "fed_eval_loss" in record:
            parts.append(f"federated eval_loss {record['fed_eval_loss']:.4f}")
        if "fed_eval_accuracy" in record:
            parts.append(f"federated eval_accuracy {record['fed_eval_accuracy']:.3f}")
        parts += [
            f"↓ {record['bytes_down'] / 1e6:.2f} MB",
            f"↑ {record['bytes_up'] / 1e6:.2f} MB",
            f"sim {record['sim_round_s']:.1f} s",
            f"wall {record['wall_s']:.1f} s",
        ]
        self.console.print("[green]" + " · ".join(parts) + "[/]")

    def evaluated(self, label: str, result: dict) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float))
        self.console.print(f"[cyan]eval {label}: {shown}[/]")


class CompositeReporter:
    """Forwards each progress call to every reporter that implements it (in order)."""

    def __init__(self, *reporters) -> None:
        self.reporters = reporters

    def _each(self, name: str, *args) -> None:
        for reporter in self.reporters:
            method = getattr(reporter, name, None)
            if method is not None:
                method(*args)

    def run_started(self, config, setup, start_round: int) -> None:
        self._each("run_started", config, setup, start_round)

    def round_started(self, round_idx: int, participants: list[int]) -> None:
        self._each("round_started", round_idx, participants)

    def client_done(self, round_idx: int, client_id: int, rank: int, train_loss: float) -> None:
        self._each("client_done", round_idx, client_id, rank, train_loss)

    def round_done(self, record: dict) -> None:
        self._each("round_done", record)

    def evaluated(self, label: str, result: dict) -> None:
        self._each("evaluated", label, result)


def _run_on_engine(cfg, run_dir: Path, resume: bool, reporter) -> dict:
    """``federation.run`` on the configured engine (``engine = "inprocess" | "flower-sim"``)."""
    from fedlora.setup import check_precisions

    check_precisions(cfg)  # before a simulation starts Ray, and before anything is written
    if cfg.engine == "flower":
        raise FedloraError(
            "engine=flower is a Flower federation: start it with `flwr run flower/ SUPERLINK` (docs/flower.md); "
            "engine=flower-sim simulates one on this machine"
        )
    if cfg.engine == "flower-sim":
        try:
            from fedlora.engines.flower.simulation import run_simulation
        except ImportError as err:
            raise FedloraError(f"engine=flower-sim needs Flower: pip install 'fedlora[flower]' ({err})") from None
        return run_simulation(cfg, run_dir, resume=resume, reporter=reporter)
    from fedlora import federation

    return federation.run(cfg, run_dir, resume=resume, reporter=reporter)


def check_output_path(path: Path, option: str, folder: bool) -> None:
    """Fail early (before any work) when ``path`` cannot become the output folder (``folder``) or file: it exists
    as the other kind, or its nearest existing ancestor is a file or not writable."""
    if path.exists() and path.is_dir() != folder:
        raise FedloraError(
            f"{option} {path}: is a {'file' if folder else 'folder'}, not a {'folder' if folder else 'file'}"
        )
    ancestor = path if path.exists() else path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FedloraError(f"{option} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK):
        raise FedloraError(f"{option} {path}: {ancestor} is not writable")


def _fail(err: Exception) -> None:
    text = " ".join(str(err).split()) or type(err).__name__  # one line, whatever a library put in the message
    # escaped: messages name TOML tables ("[settings]") and lists, which rich would take for markup
    console.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
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
    from fedlora.config import load_config, resume_config  # light: config errors come before torch is imported

    tensorboard = None
    if resume is not None and config is not None and "=" in str(config) and not config.exists():
        # `fedlora run --resume DIR rounds=6`: the first override lands in CONFIG's place
        overrides, config = [str(config), *(overrides or [])], None
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
        check_output_path(run_dir, "--resume" if resume is not None else "--out", folder=True)
        reporter = RichReporter(console)
        if cfg.log.tensorboard:
            from fedlora.tensorboard_log import TensorBoardReporter

            tensorboard = TensorBoardReporter(run_dir)
            reporter = CompositeReporter(reporter, tensorboard)
        summary = _run_on_engine(cfg, run_dir, resume is not None, reporter)
    except FedloraError as err:
        _fail(err)
    finally:
        if tensorboard is not None:
            tensorboard.close()
    before = summary.get("initial_eval") or {}
    after = summary.get("final_eval") or {}
    for key, what in (("eval_accuracy", "held-out accuracy"), ("fed_eval_accuracy", "federated accuracy")):
        if key in after:
            start = f"before {before[key]:.3f} → " if key in before else ""
            console.print(f"[bold]{what}: {start}after {after[key]:.3f}[/]")
    console.print(f"outputs in {run_dir}")


@app.command()
def plan(
    config: Annotated[Path, typer.Argument(help="TOML or YAML config describing the fleet")],
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted key=value overrides")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="plan file (default: CONFIG-STEM.plan.toml)")] = None,
    profiles: Annotated[
        Path | None,
        typer.Option(
            "--profiles",
            help="a Flower run's folder: each client's resources as its node declared or measured them (nodes.json) "
            "in place of the config's [fleet] entries",
        ),
    ] = None,
) -> None:
    """Pilot-run the fleet, choose each client's rank k_i and participation probability q_i and the bandwidth
    policy for the least predicted wall-clock time, and write a plan that ``fedlora run CONFIG plan=PLAN`` takes."""
    import tempfile

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the planner's tiny scipy solves only contend; torch unaffected
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from fedlora.config import load_config

    out = out or Path(f"{config.stem}.plan.toml")
    try:
        cfg = load_config(config, list(overrides or []))
        if cfg.plan_source is not None:
            raise FedloraError("plan: the config already has a plan applied (plan=...); plan from the bare config")
        if profiles is not None:
            from fedlora.config import apply_declared
            from fedlora.planning import reported_profiles

            cfg = apply_declared(cfg, reported_profiles(profiles, cfg.partition.num_clients))
        check_output_path(out, "--out", folder=False)  # before the pilot run, not after
        from fedlora import planning
        from fedlora.rundir import atomic_write_text

        with tempfile.TemporaryDirectory(prefix="fedlora-pilot-") as work:
            result = planning.make_plan(cfg, str(config), Path(work), log=lambda line: console.print(line))
        if profiles is not None:  # the plan carries the reported fleet, so a run with it simulates that fleet
            from fedlora.config import DECLARABLE

            result["made_for"]["profiles"] = str(profiles.resolve())
            for name in DECLARABLE:
                value = getattr(cfg.fleet, name)
                if isinstance(value, list):
                    result["settings"][f"fleet.{name}"] = value
        import tomli_w

        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, tomli_w.dumps(result))
        except OSError as err:
            raise FedloraError(f"--out {out}: cannot write the plan ({err.strerror or err})") from None
    except FedloraError as err:
        _fail(err)
    print_plan(result)
    console.print(f"plan written to {out}; use it with: fedlora run {config} plan={out} --out DIR")


def print_plan(result: dict) -> None:
    """The plan as a table: per client what the pilot measured and what the planner chose."""
    from rich.table import Table

    pilot, pred, settings = result["pilot"], result["prediction"], result["settings"]
    n = result["made_for"]["num_clients"]
    ks = settings.get("budgets.per_client", [result["made_for"]["rank"]] * n)
    table = Table(title="fedlora plan", show_lines=False)
    memory = result.get("memory")
    columns = ["client", "a_i", "ρ_i", "tokens/round", "k_i", "q_i", "t_i (s)"]
    columns += ["memory MB", "precision", "max rank", "step MB"] if memory else []
    for column in columns:
        table.add_column(column, justify="right")
    for i in range(n):
        extra = []
        if memory:
            extra = [f"{memory['caps_mb'][i]:.0f}", memory["precision"][i], str(memory["max_rank"][i])]
            extra.append(f"{memory['footprint_mb'][i]:.0f}")
        table.add_row(
            str(i),
            f"{pilot['weights'][i]:.3f}",
            f"{pilot['spread'][i]:.2f}",
            f"{pilot['tokens'][i]:.0f}",
            str(ks[i]),
            f"{settings['sampling.probs'][i]:.3f}",
            f"{pred['client_s'][i]:.2f}",
            *extra,
        )
    console.print(table)
    base = pred["baseline"]
    policies = ", ".join(f"{k} {v:.2f} s" for k, v in pred["round_s_by_policy"].items())
    console.print(
        f"predicted: {pred['rounds']:.1f} rounds × E[round] {pred['round_s']:.2f} s = {pred['wallclock_s']:.1f} s "
        f"(E[round] by policy: {policies})\n"
        f"baseline ({base['description']}): {base['rounds']:.1f} rounds × {base['round_s']:.2f} s = "
        f"{base['wallclock_s']:.1f} s → plan is {base['wallclock_s'] / max(pred['wallclock_s'], 1e-12):.2f}× faster "
        f"(predicted)\n"
        f"pilot: {pilot['seconds']:.1f} s; rank_cost κ = {pilot['rank_cost']:.4f}; "
        f"rank exponent β = {pilot.get('rank_exponent', 0.0):.3f}; "
        f"this machine trains {pilot['local_tokens_per_s']:.0f} tokens/s at full rank",
        markup=False,
        highlight=False,
    )


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="run folders written by fedlora run")],
    out: Annotated[Path, typer.Option("--out", help="folder for report.md, report.json and the PNG plots")],
    ignore: Annotated[
        list[str] | None,
        typer.Option("--ignore", help="also ignore this config key or section when grouping (repeatable)"),
    ] = None,
    partial: Annotated[
        bool, typer.Option("--partial", help="report folders without summary.json from metrics.jsonl")
    ] = False,
) -> None:
    """Compare runs: group the same experiment's seeds, tabulate final accuracy, loss, bytes and time (mean ±
    sample std), and plot accuracy and loss against round, bytes and simulated time."""
    from fedlora.report import group_table, write_report

    try:
        result = write_report(runs, out, ignore=list(ignore or []), partial=partial)
    except FedloraError as err:
        _fail(err)
    from rich.markdown import Markdown

    console.print(Markdown("\n".join(group_table(result["groups"]))))
    console.print(f"report in {out / 'report.md'} ({len(result['runs'])} runs, {len(result['plots'])} plots)")


@app.command("eval")
def evaluate(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="a run folder written by fedlora run")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="dotted key=value overrides of the run's config (e.g. other data)")
    ] = None,
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="PEFT adapter folder (default: RUN_DIR/adapter)")
    ] = None,
    base_only: Annotated[bool, typer.Option("--base-only", help="evaluate the base model without an adapter")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="also write the metrics to this JSON file")] = None,
) -> None:
    """Evaluate an exported adapter on the run's held-out data, with the evaluation code training uses."""
    import json

    from fedlora import rundir
    from fedlora.evaluation.standalone import evaluate_adapter

    try:
        result = evaluate_adapter(run_dir, adapter, list(overrides or []), base_only=base_only)
    except FedloraError as err:
        _fail(err)
    for key, value in result.items():
        if isinstance(value, dict):
            console.print(f"{key}: " + ", ".join(f"{k} {v:.4f}" for k, v in value.items()))
        else:
            console.print(f"{key}: {value:.6f}")
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    if out is not None:
        try:
            rundir.atomic_write_text(out, text)
        except OSError as err:
            _fail(FedloraError(f"--out {out}: cannot write ({err.strerror or err})"))
    else:
        print(text, end="")


@app.command("methods")
def list_methods(
    plugins: Annotated[
        list[str] | None, typer.Argument(metavar="[PLUGIN ...]", help="modules that register methods of your own")
    ] = None,
) -> None:
    """List the registered methods (and those PLUGIN modules register) as a Markdown table."""
    from fedlora import methods
    from fedlora.methods.registry import method_table

    try:
        methods.import_plugins(plugins or [])
    except FedloraError as err:
        _fail(err)
    typer.echo(method_table())


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
