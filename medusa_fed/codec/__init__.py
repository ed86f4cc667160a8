"""Payloads on the wire: flat ``dict[str, np.ndarray]`` keyed ``"<tensor>::<part>"``.

One encoder/decoder pair per payload kind of the protocol (see ``medusa_fed.protocol``):

============================  ===========================  =========================================
payload                       functions                    bytes per tensor (n elements)
============================  ===========================  =========================================
PROBE reply (top-d delta)     encode/decode_sparse_delta   2k + 2 + min(w*k, ceil(n/8)), w=1|2|4|8
TRAIN request (mask)          encode/decode_mask           ceil(n/8)
TRAIN reply, controlled       encode/decode_owned_values   4 * owned
TRAIN reply, uncontrolled     encode/decode_dense          4n (or the sparse delta above)
EVAL merged weights           encode/decode_dense          itemsize * n
============================  ===========================  =========================================

Decoders trust nothing: names, dtypes, lengths, ranges, order and finiteness are checked against
what the receiver expects, and any fault raises PayloadError naming the team and tensor. This
package is pure numpy/torch; the Flower edge is ``medusa_fed.codec.records`` (import it explicitly).
"""

from medusa_fed.codec.dense import decode_dense, encode_dense
from medusa_fed.codec.layout import SEP, dense_fp32_nbytes, payload_nbytes, tensor_shapes
from medusa_fed.codec.masks import (
    decode_mask,
    decode_owned_values,
    encode_mask,
    encode_owned_values,
)
from medusa_fed.codec.sparse import decode_sparse_delta, encode_sparse_delta

__all__ = [
    "SEP",
    "decode_dense",
    "decode_mask",
    "decode_owned_values",
    "decode_sparse_delta",
    "dense_fp32_nbytes",
    "encode_dense",
    "encode_mask",
    "encode_owned_values",
    "encode_sparse_delta",
    "payload_nbytes",
    "tensor_shapes",
]
