"""Running fedlora's clients on Flower (Message API): the same round loop, methods and accounting.

- ``engine.FlowerGridEngine``: the round loop's engine on a Flower ``Grid`` — one train message per participant
  carrying its download blob, the upload blobs back in job order.
- ``client.client_app``: the ClientApp; ``node``: what it does (build one client, fold base updates, train).
- ``server``: ``run_on_grid`` (connect the nodes, run ``federation.run`` with the engine) and the ServerApp a
  deployed Flower app runs (``flwr run``).
- ``simulation.run_simulation``: ``fedlora run CONFIG engine=flower-sim`` on Flower's simulation engine (Ray).

Everything here needs ``flwr`` (``pip install 'fedlora[flower]'``); docs/flower.md explains the deployment.
"""

import os

# fedlora reaches no network but package registries: no Flower telemetry or update checks, no Ray usage stats,
# and a simulation's Ray stays on the loopback address (set before flwr or ray is imported; a value already in
# the environment wins)
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
for _name, _value in QUIET_ENV.items():
    os.environ.setdefault(_name, _value)
