"""Large payloads through a real SuperLink: each node gets > 5 MiB arrays, sends back a transform.

The ServerApp sends every connected node a float32 array (random for its first quarter, zeros
after: Flower slices the .npy bytes in 5 MiB chunks and sends identical chunks once) and a uint64
array (values above 2**63, as node ids and large indices are). Each ClientApp reports the SHA-256
of what it received and replies with the arrays reversed. The ServerApp writes what it checked to
``result`` (JSON); tests/test_deployment.py asserts on that file.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, ConfigRecordValues, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from medusa_fed.codec.records import arrays_from_record, record_from_arrays

MIB = 1 << 20
server = ServerApp()
client = ClientApp()


def payload(values_mib: int, indices_mib: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    values = np.zeros(values_mib * MIB // 4, dtype=np.float32)
    values[: values.size // 4] = rng.standard_normal(values.size // 4, dtype=np.float32)
    indices = rng.integers(2**63, 2**64 - 1, size=indices_mib * MIB // 8, dtype=np.uint64)
    return {"values": values, "indices": indices}


def digest(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    return {
        k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in arrays.items()
    }


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    sent = payload(int(cfg["values-mib"]), int(cfg["indices-mib"]))
    nodes = sorted(grid.get_node_ids())
    messages = [
        Message(
            RecordDict({"arrays": record_from_arrays(sent)}), dst_node_id=node, message_type="train"
        )
        for node in nodes
    ]
    started = time.monotonic()
    replies = list(grid.send_and_receive(messages, timeout=float(cfg["timeout-s"])))
    seconds = time.monotonic() - started
    expected_back = digest({k: v[::-1] for k, v in sent.items()})
    found: dict[str, dict[str, object]] = {}
    for reply in replies:
        node = str(reply.metadata.src_node_id)
        if reply.has_error():
            found[node] = {"error": reply.error.reason}
            continue
        back = arrays_from_record(reply.content["arrays"])
        found[node] = {
            "received_ok": dict(reply.content["config"]) == digest(sent),
            "returned_ok": digest(back) == expected_back,
            "dtypes": {k: str(v.dtype) for k, v in back.items()},
        }
    result = {
        "nodes": [str(n) for n in nodes],
        "replies": found,
        "seconds": seconds,
        "bytes_each_way": int(sum(v.nbytes for v in sent.values())),
    }
    Path(str(cfg["result"])).write_text(json.dumps(result, indent=1))


@client.train()
def echo(message: Message, context: Context) -> Message:
    got = arrays_from_record(message.content["arrays"])
    back = {k: np.ascontiguousarray(v[::-1]) for k, v in got.items()}
    hashes: dict[str, ConfigRecordValues] = dict(digest(got))
    content = RecordDict({"config": ConfigRecord(hashes), "arrays": record_from_arrays(back)})
    return Message(content, reply_to=message)
