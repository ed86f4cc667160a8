"""Benchmark: ownership assignment throughput per policy and team count, next to a memcpy.

Synthetic top-d probes (random positions, N(0, 1) values) for k controllable teams over the
tensors of a transformer (embeddings + layers of attention, FFN, biases, norms) with at least
``--elements`` elements. For every (k, policy) cell it prints elements/s and GB/s, where the bytes
are the k probes' dense fp32 size (k x elements x 4), and the same bytes copied with ``copy_``
in this run, so the ratio says how far assignment is from memory bandwidth.

    python -m simulations.bench_ownership --elements 100000000 --teams 4
"""

from __future__ import annotations

import argparse
import logging
import math
import time

import torch
from tqdm.auto import tqdm

from medusa_fed.ownership import assign_ownership
from medusa_fed.ownership.synthetic import synthetic_probes

POLICIES = ("proportional", "argmax", "balanced")


def transformer_shapes(
    elements: int, hidden: int = 1024, ffn: int = 4096, vocab: int = 32000
) -> dict[str, tuple[int, ...]]:
    """Embedding plus whole layers until the total reaches ``elements``."""
    shapes: dict[str, tuple[int, ...]] = {"embeddings.word.weight": (vocab, hidden)}
    layer = 0
    while sum(math.prod(s) for s in shapes.values()) < elements:
        p = f"layers.{layer}."
        for m in ("q", "k", "v", "o"):
            shapes[p + f"attn.{m}.weight"] = (hidden, hidden)
            shapes[p + f"attn.{m}.bias"] = (hidden,)
        shapes[p + "ffn.up.weight"] = (ffn, hidden)
        shapes[p + "ffn.up.bias"] = (ffn,)
        shapes[p + "ffn.down.weight"] = (hidden, ffn)
        shapes[p + "ffn.down.bias"] = (hidden,)
        shapes[p + "norm1.weight"] = (hidden,)
        shapes[p + "norm2.weight"] = (hidden,)
        layer += 1
    return shapes


def memcpy_seconds(nbytes: int, block_bytes: int = 256 << 20) -> float:
    """Seconds to ``copy_`` ``nbytes`` through a block larger than any cache."""
    n = min(nbytes, block_bytes) // 4
    src, dst = torch.randn(n), torch.empty(n)
    dst.copy_(src)  # warm up: fault the pages in
    left, t0 = nbytes, time.perf_counter()
    while left > 0:
        m = min(n, left // 4)
        dst[:m].copy_(src[:m])
        left -= m * 4
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--elements", type=int, default=100_000_000, help="at least this many")
    parser.add_argument("--teams", type=int, nargs="+", default=[2, 4, 8], help="team counts k")
    parser.add_argument("--density", type=float, default=0.2, help="probe top-d fraction")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    shapes = transformer_shapes(args.elements)
    n = sum(math.prod(s) for s in shapes.values())
    print(
        f"{n:,} elements in {len(shapes)} tensors (largest {max(shapes.values(), key=math.prod)}),"
        f" density {args.density}, torch threads {torch.get_num_threads()}"
    )
    rows = []
    for k in args.teams:
        teams = [f"team{i}" for i in range(k)]
        t0 = time.perf_counter()
        probes = synthetic_probes(shapes, teams, args.density, args.seed)
        print(f"k={k}: built probes in {time.perf_counter() - t0:.1f}s")
        nbytes = k * n * 4
        copy_s = memcpy_seconds(nbytes)
        for policy in tqdm(args.policies, desc=f"k={k}"):
            t0 = time.perf_counter()
            assign_ownership(probes, shapes, dict.fromkeys(teams, True), policy, seed=args.seed)
            secs = time.perf_counter() - t0
            rows.append((k, policy, secs, n / secs, nbytes / secs / 1e9, nbytes / copy_s / 1e9))
        del probes
    print(
        f"\n{'k':>3} {'policy':<13} {'seconds':>8} {'Melem/s':>8} {'GB/s':>7} "
        f"{'memcpy GB/s':>11} {'ratio':>7}"
    )
    for k, policy, secs, eps, gbs, copy_gbs in rows:
        print(
            f"{k:>3} {policy:<13} {secs:>8.2f} {eps / 1e6:>8.1f} {gbs:>7.2f} "
            f"{copy_gbs:>11.2f} {gbs / copy_gbs:>7.3f}"
        )


if __name__ == "__main__":
    main()
