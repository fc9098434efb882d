"""fedlora: federated LoRA fine-tuning for clients that differ in compute, memory and bandwidth."""

__version__ = "0.1.0"
