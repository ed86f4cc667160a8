"""A merge written to disk as it goes: lazy inputs in, safetensors shards out.

``merge_to_folder(ShardedTensors(base), {b: LazyDeltas(ShardedTensors(tuned_b), base)}, spec, out)``
reads each tensor of the base and of every branch when its turn comes, merges it with exactly the
code :func:`medusa_fed.merging.merge_states` runs (so the values are bit for bit the same), checks
it is finite and writes it into its shard (:class:`medusa_fed.merging.shards.ShardWriter`) before
the next tensor is read. Beyond what the caller holds, memory stays near one tensor's working set:
the base tensor, one or two branch deltas, the method's accumulators and the merged tensor
(``python -m simulations.bench_merge`` prints the peak next to reading and writing the same bytes).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from medusa_fed.errors import MergeError
from medusa_fed.merging.merge import merge_stream
from medusa_fed.merging.report import TensorReport, summarize
from medusa_fed.merging.shards import MAX_SHARD_BYTES, ShardWriter, layout_of
from medusa_fed.merging.spec import MergeSpec

logger = logging.getLogger(__name__)


class LazyDeltas(Mapping[str, torch.Tensor]):
    """``tuned[name] - base[name]`` in fp32, computed when a tensor is asked for.

    Only the base's floating-point tensors are deltas; both mappings may be lazy.
    """

    returns_new_tensors = True  # every access computes a new tensor the caller owns

    def __init__(self, tuned: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]):
        self._tuned, self._base = tuned, base
        floats = [n for n, (_, dtype) in layout_of(base).items() if dtype.is_floating_point]
        missing = [n for n in floats if n not in tuned]
        if missing:
            raise MergeError(
                f"expected every floating-point tensor of the base in the tuned model, found "
                f"{len(missing)} missing (e.g. {missing[:3]}); nothing merged"
            )
        self._names = floats

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        return self._tuned[name].float() - self._base[name].float()

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def merge_to_folder(
    base: Mapping[str, torch.Tensor],
    deltas: Mapping[str, Mapping[str, torch.Tensor]],
    spec: MergeSpec,
    out: Path,
    uncontrolled: Collection[str] = (),
    dtypes: Mapping[str, torch.dtype] | None = None,
    keep: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, str] | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    progress: bool = False,
) -> dict[str, Any]:
    """Merge every tensor of ``base`` into safetensors shards under ``out``; returns the report.

    base : Mapping[str, torch.Tensor]
        The base tensors (lazy: :class:`~medusa_fed.merging.shards.ShardedTensors`, or a dict).
    deltas : Mapping[str, Mapping[str, torch.Tensor]]
        Branch -> tensor -> delta, as for :func:`~medusa_fed.merging.merge_states` (lazy or not).
    spec : MergeSpec
        Method and settings.
    out : Path
        Folder of the shards (``model.safetensors`` or ``model-0000i-of-0000N.safetensors`` +
        ``model.safetensors.index.json``); nothing is renamed into place unless every tensor
        merged to finite values.
    uncontrolled : Collection[str] (default: ())
        Branches that trained without a mask (``medusa`` only).
    dtypes : Mapping[str, torch.dtype] | None (default: None)
        Dtype of a written tensor by name; a tensor not named keeps its base tensor's dtype.
    keep : Mapping[str, torch.Tensor] | None (default: None)
        Tensors written as they are, not merged (a model's integer buffers); not in ``base``.
    metadata : Mapping[str, str] | None (default: None)
        ``__metadata__`` of every shard.
    max_shard_bytes : int (default: 5 GiB)
        Largest shard.
    progress : bool (default: False)
        Show a tqdm bar over tensors.
    """
    dtypes, keep = dtypes or {}, keep or {}
    layout = {n: (s, dtypes.get(n, d)) for n, (s, d) in layout_of(base).items()}
    both = sorted(set(layout) & set(keep))
    if both:
        raise MergeError(f"tensors {both[:3]} are both merged and kept; expected one or the other")
    layout.update(layout_of(keep))
    reports: dict[str, TensorReport] = {}
    with ShardWriter(out, layout, max_shard_bytes, metadata) as writer:
        for name, tensor in keep.items():
            writer.write(name, tensor)
        for name, merged, report in merge_stream(base, deltas, spec, uncontrolled, progress):
            # a finite sum implies finite entries; count only on the slow path
            if not bool(torch.isfinite(merged.sum())):
                bad = int((~torch.isfinite(merged)).sum())
                if bad:
                    raise MergeError(
                        f"merge {spec.method}: expected finite merged weights, found {bad:,} "
                        f"inf/NaN values in {name}; nothing written. Lower the scale or check "
                        "the branches"
                    )
            writer.write(name, merged.to(layout[name][1]))
            reports[name] = report
            del merged
        writer.finish()
    summary = summarize(spec.method, asdict(spec), reports)
    logger.info(
        "merge: %s streamed %d tensors from %d branches into %s",
        spec.method,
        len(reports),
        len(deltas),
        out,
    )
    return summary
