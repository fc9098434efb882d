"""fedlora's Flower ClientApp (``fedlora.engines.flower.client:client_app``): one SuperNode = one fedlora client.

This module imports only Flower at load time; torch, transformers and the data are imported by the handlers
(see ``node``), so a message that needs none of them (``query.finish``) starts quickly in a fresh process.
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


@client_app.query("hello")
def hello(message: Message, context: Context) -> Message:
    from fedlora.engines.flower.node import handle_hello

    return _plainly(lambda: handle_hello(message, context))


@client_app.train()
def train(message: Message, context: Context) -> Message:
    from fedlora.engines.flower.node import handle_train

    return _plainly(lambda: handle_train(message, context))


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    from fedlora.engines.flower.node import handle_evaluate

    return _plainly(lambda: handle_evaluate(message, context))


@client_app.query("finish")
def finish(message: Message, context: Context) -> Message:
    from fedlora.engines.flower.node import handle_finish

    return _plainly(lambda: handle_finish(message, context))


app = client_app
