"""The team site: a Flower ClientApp answering each Medusa stage with the training engine.

Raw data never leaves this process: replies carry only what the protocol names (facts about the
team, a sparse probe delta, owned values or a delta, a head if the team shares it, metrics). A bad
request or a failure becomes an error reply whose reason says what went wrong; the coordinator
logs it and goes on with the other teams.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from medusa_fed import codec
from medusa_fed.codec.records import arrays_from_record, record_from_arrays
from medusa_fed.errors import MedusaError
from medusa_fed.protocol import ARRAYS_KEY, CONFIG_KEY, HEAD_KEY, METRICS_KEY, START_KEY

from .team_site import TeamSite, site_for

log = logging.getLogger(__name__)


def metric_record(values: Mapping[str, float]) -> MetricRecord:
    return MetricRecord({str(k): float(v) for k, v in values.items()})


def config_record(values: Mapping[str, object]) -> ConfigRecord:
    return ConfigRecord(dict(values))  # type: ignore[arg-type]  # values are str/int/float/bool


ERROR_MEDUSA = 1  # a MedusaError: bad data, config, payload or model (reason says which)
ERROR_UNEXPECTED = 2  # anything else (reason carries the traceback)


def make_client_app(site_factory: Callable[[Context], TeamSite] = site_for) -> ClientApp:
    """Build the ClientApp; ``site_factory`` maps a Flower context to this node's TeamSite."""
    app = ClientApp()

    def handle(fn: Callable[[TeamSite, Message, Context], RecordDict]):  # type: ignore[no-untyped-def]
        def handler(message: Message, context: Context) -> Message:
            try:
                site = site_factory(context)
                return Message(fn(site, message, context), reply_to=message)
            except MedusaError as exc:
                log.error("%s: %s", message.metadata.message_type, exc)
                return Message(
                    Error(ERROR_MEDUSA, f"{type(exc).__name__}: {exc}"), reply_to=message
                )
            except Exception as exc:  # noqa: BLE001 - reported to the coordinator, not swallowed
                log.exception("%s failed", message.metadata.message_type)
                reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
                return Message(Error(ERROR_UNEXPECTED, reason), reply_to=message)

        handler.__name__ = fn.__name__
        return handler

    @app.query("hello")
    @handle
    def hello(site: TeamSite, message: Message, _ctx: Context) -> RecordDict:
        facts = site.hello(dict(message.content[CONFIG_KEY]))
        return RecordDict({CONFIG_KEY: config_record(facts)})

    @app.train("probe")
    @handle
    def probe(site: TeamSite, message: Message, _ctx: Context) -> RecordDict:
        settings = dict(message.content[CONFIG_KEY])
        sparse, metrics = site.probe(settings)
        return RecordDict(
            {
                CONFIG_KEY: config_record(site.sender(settings)),
                ARRAYS_KEY: record_from_arrays(codec.encode_sparse_delta(sparse)),
                METRICS_KEY: metric_record(metrics),
            }
        )

    @app.train("finetune")
    @handle
    def finetune(site: TeamSite, message: Message, context: Context) -> RecordDict:
        settings = dict(message.content[CONFIG_KEY])
        mask = None
        if ARRAYS_KEY in message.content:
            mask = codec.decode_mask(
                arrays_from_record(message.content[ARRAYS_KEY]), site.shapes_for(settings)
            )
        start = None
        if START_KEY in message.content:  # round r > 1 of a multi-round run
            start = codec.decode_dense(
                arrays_from_record(message.content[START_KEY]), site.shapes_for(settings)
            )
        sent_head = None
        if HEAD_KEY in message.content:
            sent_head = codec.decode_dense(arrays_from_record(message.content[HEAD_KEY]), None)
        branch = str(settings.get("branch", "train"))
        head = site.round_head(settings, sent_head)
        result = site.finetune(settings, mask, branch=branch, start=start, head=head)
        if mask is not None:
            payload = codec.encode_owned_values(result.delta, mask)
        else:
            payload = codec.encode_dense(result.delta)
        return _branch_reply(site, settings, payload, result)

    @app.train("free")
    @handle
    def free(site: TeamSite, message: Message, context: Context) -> RecordDict:
        settings = dict(message.content[CONFIG_KEY])
        result = site.finetune(settings, None, branch="baseline")
        return _branch_reply(site, settings, codec.encode_dense(result.delta), result)

    @app.evaluate("merged")
    @handle
    def evaluate(site: TeamSite, message: Message, context: Context) -> RecordDict:
        settings = dict(message.content[CONFIG_KEY])
        shared = codec.decode_dense(
            arrays_from_record(message.content[ARRAYS_KEY]), site.shapes_for(settings)
        )
        head = None
        if HEAD_KEY in message.content:
            head = codec.decode_dense(arrays_from_record(message.content[HEAD_KEY]), None)
        metrics, refit = site.evaluate_merged(settings, shared, head)
        content = RecordDict({METRICS_KEY: metric_record(metrics)})
        if refit and site.team.share_head:  # a re-fitted head, for the exported team model
            content[HEAD_KEY] = record_from_arrays(codec.encode_dense(refit))
        return content

    return app


def _branch_reply(site: TeamSite, settings: dict, payload: dict, result) -> RecordDict:  # type: ignore[no-untyped-def]
    content = RecordDict(
        {
            CONFIG_KEY: config_record(site.sender(settings)),
            ARRAYS_KEY: record_from_arrays(payload),
            METRICS_KEY: metric_record(result.metrics),
        }
    )
    if site.team.share_head and result.head:
        content[HEAD_KEY] = record_from_arrays(codec.encode_dense(result.head))
    return content


app = make_client_app()
