"""Benchmark: merge throughput and peak memory vs model size, next to reading and writing the bytes.

For each size, synthetic safetensors checkpoints are written to a scratch directory: the base and
k branch deltas (Medusa: disjoint, one owner per element; TIES: dense). Each measurement runs in a
fresh process so its peak RSS (VmHWM) is its own:

- ``io``: read every tensor of the base and the k deltas lazily
  (:class:`~medusa_fed.merging.shards.SafetensorsFile`) and write one output of the base's size,
  each tensor as it is read (:class:`~medusa_fed.merging.shards.ShardWriter`): the floor any
  merge that reads and writes these files pays, in time and in memory;
- ``medusa`` / ``ties``: the same reads and writes around the merge
  (:func:`~medusa_fed.merging.streaming.merge_to_folder`).

Peak RSS is printed next to the io floor's and next to the largest tensor's fp32 size, so "memory
beyond the floor, in largest tensors" reads straight off the table.

    python -m simulations.bench_merge --elements 10000000 100000000 500000000

prints seconds, GB/s of input read, peak RSS, and the ratio merge / io per size and method.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from medusa_fed.merging import MergeSpec
from medusa_fed.merging.shards import SafetensorsFile, ShardWriter, layout_of
from medusa_fed.merging.streaming import merge_to_folder
from simulations.bench_ownership import transformer_shapes


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def write_checkpoints(root: Path, elements: int, k: int, seed: int = 0) -> int:
    """base.safetensors, medusa{i}.safetensors (disjoint), dense{i}.safetensors; returns numel."""
    shapes = transformer_shapes(elements)
    g = torch.Generator().manual_seed(seed)
    base = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    save_file(base, str(root / "base.safetensors"))
    owners = {n: torch.randint(0, k, s, generator=g, dtype=torch.uint8) for n, s in shapes.items()}
    for i in range(k):
        dense = {n: 0.01 * torch.randn(s, generator=g) for n, s in shapes.items()}
        save_file(dense, str(root / f"dense{i}.safetensors"))
        save_file(
            {n: torch.where(owners[n] == i, d, 0.0) for n, d in dense.items()},
            str(root / f"medusa{i}.safetensors"),
        )
        del dense
    return sum(math.prod(s) for s in shapes.values())


def child(root: Path, mode: str, k: int) -> dict[str, float]:
    """One measurement in this (fresh) process."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base = SafetensorsFile(root / "base.safetensors")
    prefix = "medusa" if mode in ("io", "medusa") else "dense"
    branches = {f"b{i}": SafetensorsFile(root / f"{prefix}{i}.safetensors") for i in range(k)}
    out = root / f"out-{mode}"
    t0 = time.perf_counter()
    if mode == "io":
        with ShardWriter(out, layout_of(base)) as writer:
            for name in base:
                for f in branches.values():  # read every delta once, hold none
                    f[name]
                writer.write(name, base[name] + 0.0)  # touch the bytes once, like a merge's output
            writer.finish()
    else:
        spec = MergeSpec("medusa") if mode == "medusa" else MergeSpec("ties", density=0.2)
        merge_to_folder(base, branches, spec, out)
    secs = time.perf_counter() - t0
    shutil.rmtree(out)
    return {"seconds": secs, "peak_rss": peak_rss_bytes()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--elements", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--teams", type=int, default=3)
    parser.add_argument("--scratch", type=Path, default=None, help="where checkpoints go")
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "MODE", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        root, mode, k = args.child
        print(json.dumps(child(Path(root), mode, int(k))))
        return
    rows = []
    if args.scratch is not None:
        args.scratch.mkdir(parents=True, exist_ok=True)
    for elements in args.elements:
        root = Path(tempfile.mkdtemp(prefix="medusa-bench-merge-", dir=args.scratch))
        try:
            n = write_checkpoints(root, elements, args.teams)
            largest = max(math.prod(s) for s in transformer_shapes(elements).values()) * 4
            read_bytes = (args.teams + 1) * n * 4
            found = {}
            for mode in ("io", "medusa", "ties"):
                res = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "simulations.bench_merge",
                        "--child",
                        str(root),
                        mode,
                        str(args.teams),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                found[mode] = json.loads(res.stdout.strip().splitlines()[-1])
                print(f"{n:,} elements, {mode}: {found[mode]['seconds']:.1f} s", flush=True)
            for mode in ("io", "medusa", "ties"):
                r = found[mode]
                rows.append(
                    (
                        n,
                        mode,
                        r["seconds"],
                        read_bytes / r["seconds"] / 1e9,
                        r["peak_rss"] / 2**30,
                        r["seconds"] / found["io"]["seconds"],
                        r["peak_rss"] / found["io"]["peak_rss"],
                        (r["peak_rss"] - found["io"]["peak_rss"]) / largest,
                    )
                )
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nk = {args.teams} branches, fp32; input = base + k deltas; GB/s of input read;")
    print("x io: time / io's; RSS x io: peak RSS / io's; +largest: (RSS - io's) / largest tensor")
    print(
        f"{'elements':>13} {'mode':<7} {'seconds':>8} {'GB/s':>6} {'peak RSS GiB':>12} "
        f"{'x io':>6} {'RSS x io':>8} {'+largest':>8}"
    )
    for n, mode, secs, gbs, rss, ratio, rss_ratio, extra in rows:
        print(
            f"{n:>13,} {mode:<7} {secs:>8.1f} {gbs:>6.2f} {rss:>12.2f} {ratio:>6.2f} "
            f"{rss_ratio:>8.2f} {extra:>8.1f}"
        )


if __name__ == "__main__":
    main()
