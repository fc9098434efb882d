"""A SuperNode's warm worker: one long-lived process that runs fedlora's message handlers for the node.

Flower 1.41 starts a fresh ``flwr-clientapp`` process for every message a SuperNode receives (its two isolation
modes, ``subprocess`` and ``process``, both do), so a node that ran the handlers there would import torch,
transformers and the data libraries, build its base model and read and encode its data again for every
message: ≈ 10 s of fixed cost per message here. Instead the ClientApp process (which imports only Flower) hands
the message to this worker over a Unix socket and returns its reply; the worker keeps its imports, the model
(at the base version it reached) and the encoded data between messages (``node._RUNTIME``), exactly as a
simulation's Ray worker does.

- started by the first message (``call``), one per SuperNode (by Flower node id) and cache folder;
- answers one message at a time (a SuperNode runs one ClientApp at a time);
- stops by itself when its SuperNode process is gone (checked every second) or after ``warm-idle-s`` seconds
  (node config, default 600) without a message; nothing to stop by hand;
- refuses connections without the key it was started with (a file readable by the node's user only);
- writes its pid to ``worker.pid`` in its folder while it runs (a supervisor can stop it by pid).

Node config ``warm=true`` turns it on (opt-in); without it every message runs in its ClientApp process. The
real-process tests run their federations of own-data nodes warm (``tests/test_federation_nodes.py``,
``tests/test_fedsa_nodes.py``, ``tests/test_flower_killed_node.py``) and the plain deployment tests cold.
What travels over the socket is Flower's own serialisation of the message content and the node's context state
(``deflate`` / ``inflate_object_from_contents``); the handlers return the reply's content, which the ClientApp
process wraps in the reply Message.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Client, Listener
from pathlib import Path

IDLE_S = 600.0
START_TIMEOUT_S = 120.0


def enabled(context) -> bool:
    """Whether this message goes to the node's warm worker: on a deployed SuperNode (this process is Flower's
    ``flwr-clientapp``) whose node config says ``warm=true``."""
    if not Path(sys.argv[0]).name.startswith("flwr-clientapp"):
        return False
    return str(context.node_config.get("warm", "false")).strip().lower() in ("1", "true", "yes")


def folder_for(context) -> Path:
    """Where the node's worker keeps its key and log: ``<cache-dir>/worker-<Flower node id>``."""
    root = context.node_config.get("cache-dir")
    if root:
        base = Path(str(root)).expanduser()
    else:
        explicit = os.environ.get("FEDLORA_CACHE")
        xdg = os.environ.get("XDG_CACHE_HOME")
        cache = Path(explicit) if explicit else (Path(xdg) if xdg else Path.home() / ".cache") / "fedlora"
        base = cache.expanduser() / "flower"
    return base / f"worker-{context.node_id}"


def socket_path(folder: Path) -> Path:
    """The worker's socket: short, under the temp folder (Unix socket paths are limited to ~100 bytes)."""
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:20]
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"fedlora-warm-{os.getuid()}" / f"{digest}.sock"


# ------------------------------------------------------------------------------------------ serialisation


def _dump(obj) -> tuple[str, dict[str, bytes]]:
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return obj.object_id, {oid: nested.deflate() for oid, nested in get_all_nested_objects(obj).items()}


def _load(dumped: tuple[str, dict[str, bytes]]):
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    object_id, contents = dumped
    return inflate_object_from_contents(object_id, contents)


# ---------------------------------------------------------------------------------------- the ClientApp side


def call(kind: str, message, context):
    """Run ``node.handle_<kind>(message, context)`` in the node's warm worker (started when there is none);
    returns the reply content and updates ``context.state`` as the handler left it. A handler's error comes back
    as a FedloraError with its one line."""
    from fedlora.errors import FedloraError

    folder = folder_for(context)
    request = (
        kind,
        _dump(message.content),
        str(message.metadata.message_type),
        dict(context.node_config),
        int(context.run_id),
        int(context.node_id),
        _dump(context.state),
    )
    with _connection(folder) as conn:
        conn.send(request)
        status, first, second = conn.recv()
    if status != "ok":
        raise FedloraError(first)
    state = _load(second)
    for key in list(context.state.keys()):
        del context.state[key]
    for key, value in state.items():
        context.state[key] = value
    return _load(first)


@contextlib.contextmanager
def _connection(folder: Path):
    """A connection to the node's worker; starts one when none answers (under a lock: one worker per node)."""
    folder.mkdir(parents=True, exist_ok=True)
    sock = socket_path(folder)
    conn = _try_connect(folder, sock)
    if conn is None:
        with (folder / "lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            conn = _try_connect(folder, sock) or _start(folder, sock)
    try:
        yield conn
    finally:
        conn.close()


def _try_connect(folder: Path, sock: Path):
    key = folder / "key"
    if not (sock.exists() and key.is_file()):
        return None
    try:
        return Client(str(sock), family="AF_UNIX", authkey=key.read_bytes())
    except (OSError, EOFError, ConnectionError):
        return None


def _supernode_pid() -> int:
    """The SuperNode this ClientApp runs for: the nearest ancestor process named flower-supernode (else the
    parent): the worker lives as long as it does."""
    pid = os.getppid()
    for _ in range(8):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        if "flower-supernode" in cmdline:
            return pid
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if pid <= 1:
            break
    return os.getppid()


def _start(folder: Path, sock: Path):
    from fedlora.errors import FedloraError

    sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    key = folder / "key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    idle = os.environ.get("FEDLORA_WARM_IDLE_S", str(IDLE_S))
    command = [sys.executable, "-m", "fedlora.engines.flower.warm", str(folder), str(sock), str(_supernode_pid())]
    with (folder / "worker.log").open("ab") as log:
        subprocess.Popen([*command, idle], stdin=subprocess.DEVNULL, stdout=log, stderr=None, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        conn = _try_connect(folder, sock)
        if conn is not None:
            return conn
        time.sleep(0.05)
    raise FedloraError(f"flower: the node's warm worker did not start within {START_TIMEOUT_S:.0f} s ({folder})")


# -------------------------------------------------------------------------------------------- the worker


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _answer(request) -> tuple:
    """Run one request's handler; ("ok", reply content, state) or ("error", one line, None)."""
    from flwr.app import Context

    from fedlora.engines.flower import node
    from fedlora.errors import FedloraError

    kind, content, message_type, node_config, run_id, node_id, state = request
    message = _Received(_load(content), message_type)
    context = Context(run_id=run_id, node_id=node_id, node_config=node_config, state=_load(state), run_config={})
    try:
        reply = getattr(node, f"handle_{kind}")(message, context)
    except FedloraError as err:
        return "error", str(err), None
    except Exception as err:  # noqa: BLE001 - one line back to the server, as the ClientApp would send it
        return "error", f"{type(err).__name__}: {err}", None
    return "ok", _dump(reply), _dump(context.state)


class _Received:
    """What the handlers read of a message: its content and its type."""

    def __init__(self, content, message_type: str) -> None:
        from types import SimpleNamespace

        self.content = content
        self.metadata = SimpleNamespace(message_type=message_type)


def serve(folder: Path, sock: Path, owner: int, idle_s: float) -> None:
    """Answer the node's messages until its SuperNode ``owner`` is gone or ``idle_s`` pass without one."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    listener = Listener(str(sock), family="AF_UNIX", authkey=(folder / "key").read_bytes())  # first: callers wait
    (folder / "worker.pid").write_text(f"{os.getpid()}\n")  # who to stop by pid (it also stops by itself)
    import fedlora.engines.flower  # noqa: F401 - no telemetry
    from fedlora.engines.flower import node  # the imports a message needs, done once

    node.KEEPS_RUNTIME = True  # the hello builds the model and encodes the data as the node joins

    state = {"last": time.monotonic(), "busy": False}

    def watch() -> None:
        while True:
            time.sleep(1.0)
            idle = not state["busy"] and time.monotonic() - state["last"] > idle_s
            if not _alive(owner) or idle:
                sock.unlink(missing_ok=True)
                (folder / "worker.pid").unlink(missing_ok=True)
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    while True:
        try:
            conn = listener.accept()
        except (OSError, EOFError):  # a client without the key, or one that went away
            continue
        with conn:
            try:
                request = conn.recv()
                state["busy"] = True
                conn.send(_answer(request))
            except (OSError, EOFError):
                pass
            finally:
                state["busy"], state["last"] = False, time.monotonic()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fedlora's warm worker of one Flower SuperNode (started by it)")
    parser.add_argument("folder", type=Path)
    parser.add_argument("socket", type=Path)
    parser.add_argument("owner", type=int)
    parser.add_argument("idle_s", type=float)
    args = parser.parse_args(argv)
    serve(args.folder, args.socket, args.owner, args.idle_s)


if __name__ == "__main__":
    main()
