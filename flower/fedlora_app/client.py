"""The ClientApp: one SuperNode = one fedlora client, its node config's partition-id (fedlora.engines.flower.node)."""

from fedlora.engines.flower.client import client_app as app

__all__ = ["app"]
