"""The ServerApp: fedlora's round loop over the federation's SuperNodes (see fedlora.engines.flower.server)."""

from pathlib import Path

from fedlora.engines.flower.server import make_server_app

app = make_server_app(app_dir=Path(__file__).resolve().parents[1])
