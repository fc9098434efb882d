"""``fedlora run CONFIG engine=flower-sim``: the run on Flower's simulation engine (Ray), on this machine.

One virtual SuperNode per client (``partition-id`` = client id); Ray runs as many ClientApps at once as the
[flower] client resources allow (``flower.client_num_cpus`` / ``client_num_gpus`` of ``flower.num_cpus``). The
ServerApp runs fedlora's round loop in this process, exactly as ``federation.run`` does in-process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlora.engines.flower.server import check_payload_sizes, run_on_grid
from fedlora.errors import FedloraError


def backend_config(config) -> dict:
    """Flower's simulation backend config from the run's [flower] section."""
    f = config.flower
    init_args: dict = {"logging_level": logging.ERROR, "log_to_driver": True}
    if f.num_cpus is not None:
        init_args["num_cpus"] = f.num_cpus
    return {
        "client_resources": {"num_cpus": f.client_num_cpus, "num_gpus": f.client_num_gpus},
        "init_args": init_args,
    }


def simulate(main: Callable[[Grid], None], config, *, keep_ray: bool = False) -> None:
    """Run ``main(grid)`` as the ServerApp of a Flower simulation with one SuperNode per client of ``config``
    (and its [flower] resources). ``main`` may run several fedlora runs with the same number of clients.

    Ray is shut down afterwards unless ``keep_ray`` (a caller running several simulations in a row saves Ray's
    start-up; it must call ``ray.shutdown()`` itself). Errors raised by ``main`` are raised here."""
    import ray
    from flwr.simulation import run_simulation as flwr_run_simulation

    from fedlora.engines.flower.client import client_app

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        main(grid)

    try:
        flwr_run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=config.partition.num_clients,
            backend_config=backend_config(config),
        )
    finally:
        if not keep_ray and ray.is_initialized():
            ray.shutdown()


def run_simulation(config, run_dir: Path, *, resume: bool = False, reporter=None, keep_ray: bool = False) -> dict:
    """Run (or resume) ``config`` into ``run_dir`` with every client on a simulated SuperNode; the summary."""
    result: dict = {}
    fingerprint = check_payload_sizes(config)  # a ConfigError now rather than inside the simulation, after Ray starts

    def main(grid: Grid) -> None:
        result["summary"] = run_on_grid(
            grid, config, run_dir, resume=resume, reporter=reporter, simulation=True, base_fingerprint=fingerprint
        )

    simulate(main, config, keep_ray=keep_ray)
    if "summary" not in result:
        raise FedloraError("flower-sim: the simulation ended without finishing the run (see Flower's log above)")
    return result["summary"]
