"""The base model each in-process client trains on, by its precision (``fleet.precision``).

In-process clients share ONE base model, the server's. A client whose precision is the server base's trains on
it; a client at another precision trains on a converted copy of it, one copy per distinct precision, built the
first time a client needs it and kept for the rest of the run (``fedlora.models.precision.convert_base``: the copy
shares the server base's buffers and owns only its converted weights). Memory is therefore the server's base plus
one converted base per other precision in the fleet (e.g. fp32 + an nf4 copy ≈ 1.2-1.3× the fp32 base), whatever
the number of clients; the alternative, converting per client, would cost a quantization pass per client round.

Copies are made of the ORIGINAL base: a method that merges each round's update into the base is refused for a
fleet with copies (``fedlora.setup.check_precisions``), since only the server's base receives the merges.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from fedlora.lora.layer import LoRALinear
from fedlora.models.precision import convert_base


class ClientBases:
    """(model, LoRA layers) per client: the server's own for its precision, a lazily built copy for the others."""

    def __init__(
        self, model: nn.Module, layers: Mapping[str, LoRALinear], server_precision: str, precisions: list[str]
    ) -> None:
        self.model = model
        self.layers = dict(layers)
        self.server_precision = server_precision
        self.precisions = list(precisions)
        self._copies: dict[str, tuple[nn.Module, dict[str, LoRALinear]]] = {}

    def for_client(self, client_id: int) -> tuple[nn.Module, dict[str, LoRALinear]]:
        """The model client ``client_id`` trains on and its LoRA layers (by module path, as the server's)."""
        precision = self.precisions[client_id]
        if precision == self.server_precision:
            return self.model, self.layers
        if precision not in self._copies:
            copy = convert_base(self.model, precision, copy=True)
            self._copies[precision] = (copy, {name: copy.get_submodule(name) for name in self.layers})
        return self._copies[precision]

    def held(self) -> list[str]:
        """The precisions of the copies built so far (besides the server's base)."""
        return sorted(self._copies)
