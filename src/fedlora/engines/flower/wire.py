"""What fedlora puts into Flower's records, and reads back out.

A fedlora payload blob (safetensors bytes, see ``fedlora.payload``) travels as the ``data`` of one Flower
``Array`` inside an ``ArrayRecord``: the bytes are neither copied into numpy nor re-encoded, so
``len(array.data) == len(blob)`` and the byte counts fedlora reports are the bytes Flower's records carry.
(Flower splits large arrays into 5 MB chunks on the wire and adds its own framing; that framing is not counted,
as the in-process engine has none.) Small settings go in a ``ConfigRecord``.

Messages (message_type → content; the reply's content):

- ``query.hello``: FEDLORA {config (resolved TOML), session, base_fingerprint, threads, protocol} → FEDLORA
  {status "ok", partition_id, fedlora_version, num_examples, eval_examples, declared (JSON: what the node
  declares or measured about itself)} or {status "refused", partition_id, reason} (its own data does not fit
  the run's template). The node checks the config and its partition-id and keeps the settings in
  its Flower context for the train messages. ``session`` names one fedlora run (one
  Flower run may carry several, e.g. a simulation running every method).
- ``train``: DOWNLOAD {blob}, optional CATCHUP {blob}, FEDLORA {client, session, base_target, catchup_from} →
  UPLOAD {blob}, FEDLORA {status "ok", base_version, download_bytes, catchup_bytes, upload_bytes, seconds}; or
  FEDLORA {status "need_base", base_version} when the node lacks base updates the message assumed it had.
  ``base_target`` is how many base updates (merge-into-base methods) the client's model holds once it folded in
  the download's "sync." update (the newest); CATCHUP holds the older ones it missed (versions catchup_from..).
- ``evaluate``: DOWNLOAD {blob: the global adapter, ``fedlora.client.app.eval_blob``}, optional CATCHUP, FEDLORA
  {client, session, base_target, catchup_from} → FEDLORA {status "ok", n, eval_loss[, eval_accuracy]} (the
  node's own held-out split), or {status "need_base", base_version}. CATCHUP holds every base update the node
  lacks (versions catchup_from..base_target-1).
- ``query.finish``: FEDLORA {} → FEDLORA {removed}: the node drops the run's stored base updates.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, Message

PROTOCOL = 1
FEDLORA = "fedlora"
DOWNLOAD = "download"
UPLOAD = "upload"
CATCHUP = "catchup"
BLOB = "blob"
STYPE = "fedlora.payload"
"""The Array's serialisation type: raw fedlora payload bytes (safetensors), not a numpy array."""

HELLO = "query.hello"
TRAIN = "train"
EVALUATE = "evaluate"
FINISH = "query.finish"

STATUS_OK = "ok"
STATUS_NEED_BASE = "need_base"
STATUS_REFUSED = "refused"


def blob_record(blob: bytes) -> ArrayRecord:
    """One blob as an ArrayRecord holding a single uint8 Array whose data are the blob's bytes."""
    return ArrayRecord({BLOB: Array(dtype="uint8", shape=(len(blob),), stype=STYPE, data=bytes(blob))})


def record_blob(message: Message, name: str) -> bytes | None:
    """The blob carried in ``message``'s ArrayRecord ``name`` (None when the message has no such record)."""
    record = message.content.array_records.get(name)
    if record is None:
        return None
    array = record[BLOB]
    if array.stype != STYPE or tuple(array.shape) != (len(array.data),):
        raise ValueError(f"record {name!r} does not hold a fedlora payload (stype {array.stype!r})")
    return array.data


def settings(message: Message) -> ConfigRecord:
    """The message's fedlora settings record."""
    record = message.content.config_records.get(FEDLORA)
    if record is None:
        raise ValueError(f"message of type {message.metadata.message_type!r} has no {FEDLORA!r} record")
    return record
