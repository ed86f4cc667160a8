"""The Flower edge of the protocol: typed requests / replies <-> ``flwr.app.RecordDict``.

Written once for both ends (strategies/ sends requests and reads replies, clients/ the other way
round). Scalars travel in one ConfigRecord under their kebab-case names (``Settings`` fields
flattened into it, ``Sender`` fields too), payloads in ArrayRecords and metrics in MetricRecords
under the record key their field names (``arrays``, ``start``, ``head``, ``metrics``).

Decoding trusts nothing: a missing key, a value of the wrong type or a non-finite metric raises
PayloadError naming the field, what was expected and what was found.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from medusa_fed.codec.records import arrays_from_record, record_from_arrays
from medusa_fed.errors import PayloadError
from medusa_fed.protocol.messages import CONFIG_KEY, METRICS_KEY, finite_metrics

T = TypeVar("T")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)  # resolved in the class's own module
    return _HINTS[cls]


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def to_content(message: object) -> RecordDict:
    """A new RecordDict for one request or reply (never shared between messages)."""
    config: dict[str, Any] = {}
    content = RecordDict()
    _flatten(message, config, content)
    content[CONFIG_KEY] = ConfigRecord(config)
    return content


def _flatten(obj: object, config: dict[str, Any], content: RecordDict) -> None:
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        key = f.metadata.get("record")
        if key is not None:
            if value is None:
                continue
            if key == METRICS_KEY:
                content[key] = MetricRecord({str(k): float(v) for k, v in value.items()})
            else:
                content[key] = record_from_arrays(value)
        elif is_dataclass(value):
            _flatten(value, config, content)
        else:
            config[_kebab(f.name)] = list(value) if isinstance(value, tuple) else value


def from_content(cls: type[T], content: RecordDict) -> T:
    """Decode ``content`` as a ``cls`` message; PayloadError names the first bad field."""
    if CONFIG_KEY not in content:
        raise PayloadError(f"{cls.__name__}: expected a '{CONFIG_KEY}' record, found none")
    try:
        config = dict(content[CONFIG_KEY])  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{cls.__name__}: the '{CONFIG_KEY}' record is not a mapping") from exc
    return _build(cls, config, content)


def _build(cls: type[T], config: dict[str, Any], content: RecordDict) -> T:
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        kind = hints[f.name]
        key = f.metadata.get("record")
        where = f"{cls.__name__}.{f.name}"
        if key is not None:
            optional = f.default is not MISSING or f.default_factory is not MISSING
            if key not in content:
                if not optional:
                    raise PayloadError(f"{where}: expected a '{key}' record, found none")
                continue
            kwargs[f.name] = (
                _metrics(content[key], where)
                if key == "metrics"
                else arrays_from_record(content[key])
            )
        elif isinstance(kind, type) and is_dataclass(kind):
            kwargs[f.name] = _build(kind, config, content)
        else:
            name = _kebab(f.name)
            if name not in config:
                raise PayloadError(f"{where}: expected config key {name!r}, found none")
            kwargs[f.name] = _scalar(config[name], kind, where)
    return cls(**kwargs)


def _scalar(value: Any, kind: Any, where: str) -> Any:
    """``value`` checked against the field's type (str, int, float, bool, a Literal, a tuple of
    str); ints are accepted where floats are expected."""
    origin = get_origin(kind)
    if origin is Literal:
        if value not in get_args(kind):
            raise PayloadError(f"{where}: expected one of {get_args(kind)}, found {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise PayloadError(f"{where}: expected a list of strings, found {value!r}")
        return tuple(value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(kind)
    if ok is None:
        raise PayloadError(f"{where}: the protocol has no wire form for {kind!r}")
    if not ok:
        raise PayloadError(f"{where}: expected {kind.__name__}, found {value!r}")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise PayloadError(f"{where}: expected a finite number, found {value!r}")
    return value


def _metrics(record: object, where: str) -> dict[str, float]:
    if not isinstance(record, MetricRecord):
        raise PayloadError(f"{where}: expected a MetricRecord, found {type(record).__name__}")
    try:
        return finite_metrics(dict(record))
    except PayloadError as exc:
        raise PayloadError(f"{where}: {exc}") from None
