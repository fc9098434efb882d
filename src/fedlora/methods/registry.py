"""The registry of federated methods: everything the rest of fedlora asks about a method, in one entry.

A method is one module that builds a :class:`MethodSpec` and calls :func:`register` once at import time, as PEFT's
``register_peft_method`` does. Config validation, setup, the planner, the Flower message-size bound, the report and
the docs' method list read the entry; nothing outside the registry and the method's own module compares method
names (``tests/test_registry.py`` greps ``src/`` for that).

The interface (stable; extend it only with fields that have defaults):

- ``MethodSpec`` (frozen dataclass) — fields, in order:
    - ``name`` (str): the value of ``method = "..."`` in a config.
    - ``summary`` (str): one line, "clients train ... ; the server ..." (the docs' method list, ``fedlora methods``).
    - ``build`` (``Callable[[BuildContext], Method]``): the server state builder (see ``BuildContext``); returns an
      object satisfying :class:`fedlora.methods.base.Method`. Import torch-heavy code inside it, so that importing the
      registry (config validation, ``fedlora report``) stays light.
    - ``convention`` (:class:`Convention`): the paper code's LoRA scale rule (scaling, alpha), aggregation weighting
      and the source they were read from (``fedlora.conventions`` reads it).
    - ``ranks`` ("per_client" | "full"): "per_client": client i trains its budget k_i (``budgets.*``, capped by
      ``fleet.max_rank``); "full": every client trains ``lora.rank`` (budgets are ignored, and a rank cap below
      ``lora.rank`` is a config error).
    - ``payload`` (``Callable[[PayloadContext], PayloadSizes]``): the tensors (name → shape) of the largest download
      and upload blob of any client in any round: the Flower message-size bound (``engines/flower/limits.py``)
      turns them into bytes. :func:`factor_payload` is the common case (B and A at the largest budget);
      :func:`base_update_payload` the merge-into-base one (the previous round's update down, factors up).
    - ``dp`` (:class:`Fit`): whether client-level DP (clip + Gaussian noise on the aggregate) fits, and why (not).
      A method that fits takes ``aggregate(plans, uploads, weights, noise=GaussianNoise)``.
    - ``secure_aggregation`` (:class:`Fit`): whether a sum-only server (secure aggregation) could run it, and why.
    - ``options`` (``type[pydantic.BaseModel] | None``): the model of the method's config section (default None;
      derive it from :class:`Options`).
    - ``options_section`` (str | None): the config section holding the options (default: the method's name).
    - ``merges_into_base`` (``bool | Callable[[options], bool]``, default False): whether each round's global update
      is folded into the frozen base (fresh adapters each round); a callable decides from the options instance.
    - ``update_space`` ("factors" | "product", default "product"): how the planner's pilot measures a client's
      update x_i: in factor space (scatter of ΔB, ΔA into the rank-r global: the factor-averaging methods) or in
      model space s·(B'A' − BA) per module.
    - ``sketched`` (bool, default False): the client trains a random rank-k_i block of a rank-r global scaled by
      r/k_i (FSLoRA), so E‖S x‖² = (r/k_i)‖x‖² in the planner's spread.
- ``BuildContext`` (frozen dataclass) — what a builder receives: ``name``, ``shapes`` (module → ModuleShape),
  ``budgets`` (list[int], each client's rank; ``lora.rank`` for every client of a "full" method), ``rank``
  (``lora.rank``), ``scale`` (ScaleRule in force), ``seed`` (the run seed; ``init_generator()`` gives the seeded
  generator every built-in method draws its initial factors from), ``options`` (the options instance or None),
  ``server`` (the ``[server]`` section: optimizer settings), ``config`` (the whole RunConfig, read-only, for
  anything else) and ``setup`` (the run's model and data, or None when a checkpoint is to be loaded).
- ``PayloadContext`` (frozen dataclass): ``shapes`` (module → (m, n)), ``budgets``, ``rank``, ``per_round`` (most
  participants of a round), ``options``.
- ``PayloadSizes``: ``download`` and ``upload`` (dict tensor name → shape), ``download_what``, ``upload_what``.
- ``register(spec, replace=False)``, ``get(name)`` (ConfigError naming ``method`` and the known names),
  ``names()`` (registration order: the built-ins first, in the report's order), ``specs()``, ``known(name)``,
  ``unregister(name)`` (tests), ``import_plugins(modules)`` (what the config's ``plugins = [...]`` does),
  ``method_table()`` (the docs' method list).

A user's own method: a module in their own package that calls ``fedlora.methods.register(MethodSpec(...))``, listed
in the config's ``plugins`` (imported when the config is validated, so on Flower the server and every node import
it too). docs/methods.md has a worked example; ``tests/plugins/toy_method.py`` is one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from fedlora.errors import ConfigError
from fedlora.lora.scaling import ScaleRule, ScalingKind

if TYPE_CHECKING:
    import torch

    from fedlora.methods.base import Method


class Options(BaseModel):
    """Base of a method's options model (its config section): unknown keys and nan/inf are errors naming the field."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Convention:
    """A method's default scale rule and aggregation weighting, and where they come from (repository and file)."""

    scaling: ScalingKind
    alpha: float
    source: str
    weighting: Literal["num_examples", "uniform"] = "num_examples"


@dataclass(frozen=True)
class Fit:
    """Whether a privacy mechanism fits a method: ``ok``, and ``why`` (a clause completing "<method> ...", e.g.
    "merges the stack of every client's own factors (each is released as is)")."""

    ok: bool
    why: str


@dataclass(frozen=True)
class BuildContext:
    """What a method's server-state builder receives (see the module docstring)."""

    name: str
    shapes: Mapping[str, Any]
    """Module path → ModuleShape(out_features m, in_features n)."""
    budgets: list[int]
    """Each client's rank k_i (``lora.rank`` for every client of a "full"-rank method)."""
    rank: int
    """``lora.rank``: the global rank r."""
    scale: ScaleRule
    seed: int
    options: Any = None
    """The method's options (an instance of ``MethodSpec.options``), or None."""
    server: Any = None
    """The ``[server]`` config section (optimizer, lr, betas, eps, weight_decay, weighting)."""
    config: Any = None
    """The whole RunConfig (read it, do not change it), for what the fields above do not carry; None when the
    state is rebuilt without one."""
    client_states: Any = None
    """The folder of the clients' state stores (``<dir>/<id>/``, ``fedlora.client.state``) when the server can read
    it (in-process runs keep it in the run folder), else None. For methods whose clients keep state (FedSA-LoRA)."""
    setup: Any = None
    """The run's ``fedlora.setup.RunSetup`` (model, LoRA layers, client data) when the state is built for a run that
    starts (Fed-SB initialises from a gradient of the model); None, or a bare namespace without ``model``, when the
    state is rebuilt to load a checkpoint."""

    def init_generator(self) -> torch.Generator:
        """The seeded generator the initial global factors are drawn from (``seeding.generator(seed, "init")``)."""
        from fedlora import seeding

        return seeding.generator(self.seed, "init")


@dataclass(frozen=True)
class PayloadContext:
    """What a method's payload-size function receives."""

    shapes: Mapping[str, tuple[int, int]]
    """Module path → (out_features m, in_features n)."""
    budgets: Sequence[int]
    """Each client's rank k_i."""
    rank: int
    """``lora.rank``."""
    per_round: int
    """The most clients one round can have (clients_per_round, or every client under independent sampling)."""
    options: Any = None


@dataclass(frozen=True)
class PayloadSizes:
    """The tensors (name → shape, float32) of the largest download and upload blob of any client in any round."""

    download: dict[str, tuple[int, ...]]
    upload: dict[str, tuple[int, ...]]
    download_what: str
    upload_what: str


def factor_tensors(shapes: Mapping[str, tuple[int, int]], rank_of: Mapping[str, int], prefix: str) -> dict:
    """``{prefix+module+".lora_B": (m, k), prefix+module+".lora_A": (k, n)}`` for every module at rank_of[module]."""
    tensors: dict[str, tuple[int, ...]] = {}
    for name, (m, n) in shapes.items():
        k = rank_of[name]
        tensors[f"{prefix}{name}.lora_B"] = (m, k)
        tensors[f"{prefix}{name}.lora_A"] = (k, n)
    return tensors


def factor_payload(ctx: PayloadContext) -> PayloadSizes:
    """The common payload: a client downloads its starting factors ("adapter.") and uploads its trained ones, B and
    A of every module at its rank; the largest is at the largest budget."""
    k_max = max(ctx.budgets)
    at = {name: k_max for name in ctx.shapes}
    what = f"rank-{k_max} factors of {len(ctx.shapes)} modules"
    return PayloadSizes(factor_tensors(ctx.shapes, at, "adapter."), factor_tensors(ctx.shapes, at, ""), what, what)


def base_update_payload(ctx: PayloadContext, rank_of: Callable[[int, int, int], int]) -> PayloadSizes:
    """A merge-into-base method's largest blobs: the download carries the previous round's base update ("sync.",
    rank ``rank_of(stacked, m, n)`` per module, stacked = Σ of the round's largest budgets; fresh adapters come from
    a seed), the upload the client's rank-k_max factors."""
    k_max = max(ctx.budgets)
    stacked = sum(sorted(ctx.budgets, reverse=True)[: ctx.per_round])
    sync_rank = {name: rank_of(stacked, m, n) for name, (m, n) in ctx.shapes.items()}
    upload = factor_tensors(ctx.shapes, {name: k_max for name in ctx.shapes}, "")
    download = factor_tensors(ctx.shapes, sync_rank, "sync.")
    what = f"the previous round's base update, rank up to {max(sync_rank.values())} ({ctx.per_round} clients stacked)"
    return PayloadSizes(download, upload, what, f"rank-{k_max} factors of {len(ctx.shapes)} modules")


@dataclass(frozen=True)
class MethodSpec:
    """One federated method, as the rest of fedlora sees it (see the module docstring for every field)."""

    name: str
    summary: str
    build: Callable[[BuildContext], Method]
    convention: Convention
    ranks: Literal["per_client", "full"]
    payload: Callable[[PayloadContext], PayloadSizes]
    dp: Fit
    secure_aggregation: Fit
    options: type[BaseModel] | None = None
    options_section: str | None = None
    merges_into_base: bool | Callable[[Any], bool] = False
    update_space: Literal["factors", "product"] = "product"
    sketched: bool = False
    source: str = field(default="")
    """Where the method's rule comes from (paper, repository), for the docs' method list."""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"MethodSpec.name: {self.name!r} is not a plain name (letters, digits, - and _)")
        if self.ranks not in ("per_client", "full"):
            raise ValueError(f"MethodSpec.ranks: {self.ranks!r} is not 'per_client' or 'full'")
        if self.update_space not in ("factors", "product"):
            raise ValueError(f"MethodSpec.update_space: {self.update_space!r} is not 'factors' or 'product'")

    @property
    def section(self) -> str | None:
        """The config section of the options (None: the method has none)."""
        if self.options is None:
            return None
        return self.options_section or self.name

    def merges(self, options: Any) -> bool:
        """Whether, with these options, each round's global update is folded into the frozen base."""
        return self.merges_into_base(options) if callable(self.merges_into_base) else bool(self.merges_into_base)


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec, replace: bool = False) -> MethodSpec:
    """Add ``spec`` under ``spec.name`` (ValueError when the name is taken, unless ``replace``); returns it."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"register: expected a MethodSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a registered method (tests that register toys clean up with it)."""
    _REGISTRY.pop(name, None)


def known(name: str) -> bool:
    return name in _REGISTRY


def names() -> tuple[str, ...]:
    """Every registered method, in registration order (built-ins first, in the report's order)."""
    return tuple(_REGISTRY)


def specs() -> tuple[MethodSpec, ...]:
    return tuple(_REGISTRY.values())


def unknown_method(name: object) -> str:
    """The one-line complaint for a method nobody registered."""
    return f"method: not a registered method; known: {', '.join(names())} (or register one: docs/methods.md)"


def get(name: str) -> MethodSpec:
    """The spec registered as ``name`` (ConfigError, one line naming ``method`` and the known names, otherwise)."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ConfigError(unknown_method(name))
    return spec


def method_table() -> str:
    """The registered methods as a Markdown table (docs/methods.md holds it between ``<!-- methods:begin -->`` and
    ``<!-- methods:end -->``; ``fedlora methods`` prints it)."""
    rows = [
        "| method | clients train | server | ranks | merges into base | options | DP | sum-only secure aggregation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for spec in specs():
        train, _, server = spec.summary.partition(" | ")
        options = spec.options() if spec.options is not None else None
        merges = "yes" if spec.merges(options) else "no"
        if callable(spec.merges_into_base):
            merges += " (default options)"
        fields = ", ".join(f"`{spec.section}.{name}`" for name in spec.options.model_fields) if spec.options else "—"
        ranks = "k_i per client" if spec.ranks == "per_client" else "`lora.rank` for all"
        dp = "yes" if spec.dp.ok else f"no: {spec.dp.why}"
        secure = ("yes" if spec.secure_aggregation.ok else "no") + f": {spec.secure_aggregation.why}"
        rows.append(f"| `{spec.name}` | {train} | {server} | {ranks} | {merges} | {fields} | {dp} | {secure} |")
    return "\n".join(rows)


def import_plugins(modules: Iterable[str]) -> None:
    """Import each module (a user's method module that registers itself); ConfigError naming ``plugins`` and the
    module when one cannot be imported."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:  # the user's code: any failure is reported as the plugin's, on one line
            first = str(err).splitlines()[0] if str(err) else ""
            raise ConfigError(f"plugins: cannot import {module!r} ({type(err).__name__}: {first})") from None
