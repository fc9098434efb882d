"""The server side on Flower: connect the SuperNodes, then run fedlora's own round loop through them.

``run_on_grid`` is shared by the simulation (``fedlora run CONFIG engine=flower-sim``) and by the ServerApp of
the deployable Flower app (``flwr run``), whose run config names the fedlora config:

    [tool.flwr.app.config]
    config = "fedlora.toml"      # a fedlora config; relative to the Flower app's folder
    overrides = ""               # dotted key=value fedlora overrides, space-separated ("rounds=3 method=florist")
    out = "runs/flower"          # the run folder on the SuperLink's machine (relative: to the ServerApp's cwd)
    resume = false               # continue the run in ``out``

The run folder holds what ``fedlora run`` writes (config.resolved.toml, metrics.jsonl, summary.json, adapter/,
checkpoint/), with ``engine = "flower"`` in the resolved config.
"""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlora.engines.flower.engine import Connection, FlowerGridEngine, connect
from fedlora.errors import ConfigError, FedloraError


def client_threads(config, simulation: bool) -> int:
    """torch threads for each ClientApp: flower.client_threads; else in a simulation the CPUs Ray reserves per
    client (clients share this machine's cores), on a federation ``threads``; 0 leaves torch's default."""
    f = config.flower
    if f.client_threads:
        return f.client_threads
    if simulation:
        return max(1, int(f.client_num_cpus))
    return config.threads or 0


def check_payload_sizes(config) -> str:
    """Check that no round can send a blob over ``flower.max_message_mb`` (ConfigError otherwise) from the module
    shapes of the run's base model (built on the CPU, as a node builds it); returns the base's weight fingerprint
    the nodes must match ("" for a named model)."""
    from fedlora.engines.flower.limits import check_message_limit
    from fedlora.engines.flower.node import client_base_model
    from fedlora.lora.layer import inject_lora
    from fedlora.setup import client_budgets

    model, _, fingerprint = client_base_model(config, device="cpu")
    try:
        layers = inject_lora(model, config.model.target_modules)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    shapes = {name: (layer.out_features, layer.in_features) for name, layer in layers.items()}
    check_message_limit(config, shapes, client_budgets(config))
    return fingerprint


SESSION_FILE = "flower-session"
"""The run folder's file naming its fedlora session on the nodes, so that a resumed run finds the state its nodes
keep for it (FedSA-LoRA's B, ``node.client_state_for``)."""


def run_session(run_dir: Path, resume: bool) -> str:
    """The session id of the fedlora run in ``run_dir``: the one it had when resumed, else a new one."""
    path = run_dir / SESSION_FILE
    if resume and path.is_file():
        return path.read_text(encoding="utf-8").strip()
    return uuid.uuid4().hex[:12]


def remember_session(run_dir: Path, session: str, resume: bool) -> None:
    """Write the session id to the run folder once the nodes have accepted the run, and never into a folder that
    already holds a run (``federation.run`` refuses that without touching it)."""
    from fedlora import rundir

    if resume or not (run_dir / rundir.CHECKPOINT_DIR).exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write_text(run_dir / SESSION_FILE, session + "\n")


def run_on_grid(
    grid: Grid,
    config,
    run_dir: Path,
    *,
    resume: bool = False,
    reporter=None,
    simulation=False,
    base_fingerprint: str | None = None,
) -> dict:
    """``federation.run`` with its clients on the SuperNodes of ``grid``; returns the run's summary.

    ``base_fingerprint``: what :func:`check_payload_sizes` returned, when the caller already ran it (it builds the
    base model); otherwise it runs here."""
    from fedlora import federation
    from fedlora.config import dump_config

    f = config.flower
    say = getattr(reporter, "log", None)
    fingerprint = base_fingerprint
    if fingerprint is None:  # before any node is contacted or anything is written
        fingerprint = check_payload_sizes(config)
    session = run_session(run_dir, resume)  # this fedlora run on these nodes (one Flower run may carry several)
    found = connect(
        grid,
        dump_config(config),
        config.partition.num_clients,
        session=session,
        base_fingerprint=fingerprint,
        threads=client_threads(config, simulation),
        timeout_s=f.connect_timeout_s,
        ttl=f.message_ttl_s,
        log=say,
    )
    check_refusals(config, found)
    remember_session(run_dir, session, resume)
    config = with_declared_resources(config, found.reports)
    if say:
        say("flower: clients on nodes " + ", ".join(f"{cid}→{node}" for cid, node in sorted(found.nodes.items())))
    deadline = config.faults.round_deadline_s
    engine = FlowerGridEngine(
        grid,
        found.nodes,
        session=session,
        round_timeout_s=deadline if deadline is not None else f.round_timeout_s,
        message_ttl_s=f.message_ttl_s,
        fail_fast=config.faults.fail_fast,
        timeout_setting="faults.round_deadline_s" if deadline is not None else "flower.round_timeout_s",
        max_message_mb=f.max_message_mb,
        reports=found.reports,
        refused=found.refused,
    )
    try:
        return federation.run(config, run_dir, resume=resume, reporter=reporter, engine=engine)
    finally:
        engine.finish()


def check_refusals(config, found: Connection) -> None:
    """Stop the run (before anything is written) when a node refused it and the run cannot go on without it:
    ``faults.fail_fast``, or fewer clients accepted than ``faults.min_successful`` needs in a round."""
    if not found.refused:
        return
    first = next(iter(sorted(found.refused.items())))[1]
    if config.faults.fail_fast:
        raise FedloraError(f"flower: {first} (faults.fail_fast)")
    if len(found.nodes) < config.faults.min_successful:
        raise FedloraError(
            f"flower: {first}; {len(found.nodes)} client(s) left, fewer than faults.min_successful="
            f"{config.faults.min_successful}"
        )


def with_declared_resources(config, reports: dict[int, dict]):
    """``config`` with what each node declared or measured in place of its client's [fleet] entry
    (``fedlora.config.apply_declared``); a declared set that does not fit the run is one error line."""
    from fedlora.config import apply_declared

    declared = {cid: report["declared"] for cid, report in reports.items() if report.get("declared")}
    try:
        return apply_declared(config, declared)
    except ConfigError as err:
        raise FedloraError(f"flower: the resources the nodes declared do not fit the run: {err}") from None


class LogReporter:
    """Progress as plain lines on stdout (``flwr run --stream`` / ``flwr log`` show them)."""

    def __init__(self, run_dir: Path | None = None) -> None:
        self.run_dir = run_dir

    def log(self, line: str) -> None:
        print(f"[fedlora] {line}", flush=True)

    def run_started(self, config, setup, start_round: int) -> None:
        if self.run_dir is not None:  # said once the folder holds the run (its config), not before
            self.log(f"run folder {self.run_dir.resolve()}")
        self.log(
            f"{config.method}: {config.partition.num_clients} clients, rounds {start_round}..{config.rounds}, "
            f"rank {config.lora.rank}"
        )

    def round_started(self, round_idx: int, participants: list[int]) -> None:
        self.log(f"round {round_idx}: clients {participants}")

    def client_done(self, round_idx: int, client_id: int, rank: int, train_loss: float) -> None:
        self.log(f"  client {client_id} rank {rank} train_loss {train_loss:.4f}")

    def round_done(self, record: dict) -> None:
        loss = record["train_loss"]
        shown = f"{loss:.4f}" if loss is not None else "-"
        self.log(
            f"round {record['round']} done: train_loss {shown}, ↓ {record['bytes_down']} B, "
            f"↑ {record['bytes_up']} B, catch-up ↓ {record.get('catchup_bytes_down', 0)} B, "
            f"wall {record['wall_s']:.1f} s"
        )

    def evaluated(self, label: str, result: dict) -> None:
        # scalar figures only: a mixture's per-task accuracies (eval_task_accuracy) are a dict, kept in the records
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, int | float))
        self.log(f"eval {label}: {shown}")


def deployment_config(run_config: dict, app_dir: Path | None):
    """(fedlora config, run folder, resume) from a Flower run config (see the module docstring)."""
    from fedlora.config import load_config, resume_config

    out = str(run_config.get("out", "") or "")
    if not out:
        raise ConfigError("flower run config: 'out' (the run folder) is required")
    run_dir = Path(out).expanduser()
    resume = bool(run_config.get("resume", False))
    overrides = shlex.split(str(run_config.get("overrides", "") or ""))
    source = str(run_config.get("config", "") or "")
    path = Path(source).expanduser() if source else None
    if path is not None and not path.is_absolute() and app_dir is not None:
        path = app_dir / path
    if resume:
        config = resume_config(run_dir, path, overrides)
    else:
        if path is None:
            raise ConfigError("flower run config: 'config' (a fedlora config file) is required")
        config = load_config(path, overrides)
    config.engine = "flower"
    return config, run_dir, resume


def make_server_app(app_dir: Path | None = None) -> ServerApp:
    """The ServerApp of a deployed fedlora Flower app; relative config paths are taken from ``app_dir``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        import os

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        reporter = LogReporter()
        try:
            config, run_dir, resume = deployment_config(dict(context.run_config), app_dir)
            reporter.run_dir = run_dir
            summary = run_on_grid(grid, config, run_dir, resume=resume, reporter=reporter)
        except FedloraError as err:  # one line first; Flower 1.41 then logs the exception it gets, traceback and all
            reporter.log(f"error: {err}")
            raise FedloraError(str(err)).with_traceback(None) from None
        final = summary.get("final_eval") or {}
        reporter.log("done: " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()) + f"; outputs in {run_dir}")

    return app


server_app = make_server_app()
