"""fedlora's Flower ClientApp (``fedlora.engines.flower.client:client_app``): one SuperNode = one fedlora client.

This module imports only Flower at load time. On a deployed SuperNode (Flower starts a fresh ``flwr-clientapp``
process for every message) a message is handed to the node's warm worker (``warm``), a long-lived process that
keeps fedlora's imports, the base model and the encoded data between messages, when its node config says
``warm=true``; otherwise it runs in the ClientApp process (importing torch, transformers and the data each
time). In a simulation the handlers run in the (long-lived) Ray worker itself.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

client_app = ClientApp()


def _plainly(handler):
    """Run a handler; any error leaves as one FedloraError line "<type>: <message>" (Flower carries its text
    back to the server, which names the client)."""
    from fedlora.errors import FedloraError

    try:
        return handler()
    except FedloraError:
        raise
    except Exception as err:
        raise FedloraError(f"{type(err).__name__}: {err}") from err


def _handle(kind: str, message: Message, context: Context) -> Message:
    """The reply to ``message``: its content made by ``fedlora.engines.flower.node.handle_<kind>``, in the node's
    warm worker when it has one."""
    from fedlora.engines.flower import warm

    def run():
        if warm.enabled(context):
            return warm.call(kind, message, context)
        from fedlora.engines.flower import node

        return getattr(node, f"handle_{kind}")(message, context)

    return Message(_plainly(run), reply_to=message)


@client_app.query("hello")
def hello(message: Message, context: Context) -> Message:
    return _handle("hello", message, context)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    return _handle("train", message, context)


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return _handle("evaluate", message, context)


@client_app.query("finish")
def finish(message: Message, context: Context) -> Message:
    return _handle("finish", message, context)


app = client_app
