"""fedlora as a Flower app: the components named in pyproject.toml's [tool.flwr.app.components]."""
