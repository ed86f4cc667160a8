"""The team site as a Flower ClientApp: Flower messages in, typed requests to TeamSite, replies out.

Raw data never leaves this process: replies carry only what the protocol names (facts about the
team, a sparse probe delta, owned values or a delta, a head if the team shares it, metrics). A bad
request or a failure becomes an error reply whose reason says what went wrong; the coordinator
logs it and goes on with the other teams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from medusa_fed.errors import MedusaError, StateMissing
from medusa_fed.pipeline.transport import error_reason
from medusa_fed.protocol import ERROR_RESEND, REQUEST_TYPES, Request
from medusa_fed.protocol.flower import from_content, to_content

from .team_site import TeamSite, site_for

log = logging.getLogger(__name__)

ERROR_MEDUSA = 1  # a MedusaError: bad data, config, payload or model (reason says which)
ERROR_UNEXPECTED = 2  # anything else (reason carries the traceback)


def make_client_app(site_factory: Callable[[Context], TeamSite] = site_for) -> ClientApp:
    """Build the ClientApp; ``site_factory`` maps a Flower context to this node's TeamSite."""
    app = ClientApp()

    def serve(message: Message, context: Context) -> Message:
        kind = message.metadata.message_type
        try:
            request: Request = from_content(REQUEST_TYPES[kind], message.content)
            reply = site_factory(context).handle(request)
            return Message(to_content(reply), reply_to=message)
        except Exception as exc:  # noqa: BLE001 - reported to the coordinator, not swallowed
            code = ERROR_MEDUSA if isinstance(exc, MedusaError) else ERROR_UNEXPECTED
            if isinstance(exc, StateMissing):  # not a fault: the coordinator sends it all
                code = ERROR_RESEND
                log.info("%s: %s", kind, exc)
            elif code == ERROR_MEDUSA:
                log.error("%s: %s", kind, exc)
            else:
                log.exception("%s failed", kind)
            return Message(Error(code, error_reason(exc)), reply_to=message)

    app.query("hello")(serve)
    app.train("probe")(serve)
    app.train("finetune")(serve)
    app.train("free")(serve)
    app.evaluate("merged")(serve)
    return app


app = make_client_app()
