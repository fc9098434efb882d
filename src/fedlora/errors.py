"""Errors a user can act on. The CLI prints them as one line and exits with status 2."""


class FedloraError(Exception):
    """Base class: bad input from the user (config, data, model path, plan or resume folder)."""


class ConfigError(FedloraError):
    """A config key, type or value is wrong. The message names the field."""


class DataError(FedloraError):
    """A data file or dataset cannot be used. The message names the file or dataset."""


class ModelError(FedloraError):
    """A base model cannot be loaded. The message names the model path or id."""


class CheckpointError(FedloraError):
    """A run folder cannot be resumed. The message names the folder or file."""
