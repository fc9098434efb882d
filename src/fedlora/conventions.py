"""Each method's own LoRA scale convention, from its authors' public code: the default when a run leaves
``lora.scaling`` and ``lora.alpha`` unset.

The conventions live in the methods' registry entries (``MethodSpec.convention``, ``fedlora.methods.<name>``);
this module reads them. Compare methods under their own papers' conventions (these defaults), or under one stated
convention for all (set ``lora.scaling`` and ``lora.alpha``): never under a mix nobody chose. docs/methods.md has
the table with the rest of each method's conventions (server step, weighting, hand-off) and fedlora's defaults.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from fedlora import methods
from fedlora.lora.scaling import ScaleRule, ScalingKind
from fedlora.methods.registry import Convention


class _Conventions(Mapping[str, Convention]):
    """Method name → its Convention, for every registered method (a live view of the registry)."""

    def __getitem__(self, method: str) -> Convention:
        return methods.get(method).convention

    def __iter__(self) -> Iterator[str]:
        return iter(methods.names())

    def __len__(self) -> int:
        return len(methods.names())


CONVENTIONS: Mapping[str, Convention] = _Conventions()


def convention(method: str) -> Convention:
    """The method's own convention (ConfigError naming ``method`` for an unknown one)."""
    return methods.get(method).convention


def scale_rule(method: str, scaling: ScalingKind | None, alpha: float | None) -> ScaleRule:
    """A run's LoRA scale rule: ``scaling`` and ``alpha`` (``lora.scaling``, ``lora.alpha``), each defaulting to the
    method's own."""
    own = convention(method)
    return ScaleRule(scaling or own.scaling, own.alpha if alpha is None else alpha)


__all__ = ["CONVENTIONS", "Convention", "convention", "scale_rule"]
