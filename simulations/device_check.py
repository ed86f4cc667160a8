"""Device check: masked training on the device is exact and how fast it is (a few minutes).

    python -m simulations.device_check [--device auto] [--steps 6]

prints (1) the device, (2) masked vs unmasked step time of full fine-tuning and LoRA on the
bundled MiniLM (:mod:`simulations.bench_training`), (3) a short two-team LoRA Medusa run on the
device (probe, assignment, masked fine-tune, merge, evaluate, no transport): wall time, training
tokens per second (non-padding tokens of the probes and fine-tunes over the seconds they
trained), the merged accuracy, and how many non-owned elements the masked fine-tunes moved
(must be 0: the masks are exact on the device).
``scripts/device_check.sh`` runs it under a time limit.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from medusa_fed.training.device import resolve_device
from simulations.bench_training import bench


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        bf16 = "bf16 autocast" if torch.cuda.is_bf16_supported() else "no bf16: fp32"
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {bf16}"
    return f"CPU, {torch.get_num_threads()} torch threads, fp32 (no GPU: nothing to autocast)"


def short_run(device: str, max_train: int) -> dict[str, float]:
    """Two LoRA teams on the device: probe, assign, masked fine-tune, Medusa merge, evaluate.

    Returns the training tokens per second (probes and masked fine-tunes), the wall time, the
    merged model's mean accuracy, and how many non-owned elements moved (must be 0).
    """
    from medusa_fed.merging import MergeSpec, merge_states
    from medusa_fed.ownership import assign_ownership
    from medusa_fed.training.branch import finetune, probe
    from medusa_fed.training.config import ModelSpec, TrainConfig
    from medusa_fed.training.data import TaskSpec, load_task
    from medusa_fed.training.evaluate import evaluate
    from medusa_fed.training.models import load_base

    started = time.perf_counter()
    base = load_base(ModelSpec(method="lora"))
    cfg = TrainConfig(epochs=1.0, batch_size=16, max_length=64, device=device)
    data = {t: load_task(TaskSpec(t, max_train=max_train, max_test=64)) for t in ("movie", "spam")}
    probes = {t: probe(base, d, cfg) for t, d in data.items()}
    owners = assign_ownership(
        {t: p.sparse for t, p in probes.items()}, base.shapes, dict.fromkeys(data, True)
    )
    tokens = sum(p.metrics["tokens"] for p in probes.values())
    seconds = sum(p.metrics["seconds"] for p in probes.values())
    deltas, heads, moved = {}, {}, 0
    for team, d in data.items():
        mask = owners.mask(team)
        branch = finetune(base, d, cfg, mask=mask, head=probes[team].head)
        moved += sum(int((delta[~mask[n]] != 0).sum()) for n, delta in branch.delta.items())
        deltas[team], heads[team] = branch.delta, branch.head
        tokens += branch.metrics["tokens"]
        seconds += branch.metrics["seconds"]
    merged = merge_states(base.shared_state(), deltas, MergeSpec("medusa"))
    accuracy = [
        evaluate(base, merged, heads[t], d.test, max_length=64, device=device)["accuracy"]
        for t, d in data.items()
    ]
    return {
        "wall_s": time.perf_counter() - started,
        "train_s": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / max(seconds, 1e-9),
        "accuracy": sum(accuracy) / len(accuracy),
        "moved_outside_mask": float(moved),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--steps", type=int, default=6, help="timed step pairs per method")
    parser.add_argument("--max-train", type=int, default=96, help="examples per team")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    print(f"device: {device} ({_describe(device)}); torch {torch.__version__}", flush=True)
    print("\nmasked vs unmasked step (MiniLM, batch 16 x 128 tokens, 1/3 owned):")
    print(f"{'method':<7} {'unmasked s':>10} {'masked s':>9} {'ratio':>6} {'tokens/s':>9}")
    for method in ("full", "lora"):
        r = bench(method, args.steps, 1 / 3, 16, str(device))
        print(
            f"{method:<7} {r['plain_s']:>10.4f} {r['masked_s']:>9.4f} {r['ratio']:>6.3f} "
            f"{r['tokens_per_s']:>9.0f}",
            flush=True,
        )
    r = short_run(str(device), args.max_train)
    print(
        f"\nshort LoRA Medusa run (movie + spam, {args.max_train} examples each, probe + masked "
        f"fine-tune 1 epoch each, merge, evaluate): wall {r['wall_s']:.1f} s; "
        f"{r['tokens']:,.0f} training tokens in {r['train_s']:.1f} s = "
        f"{r['tokens_per_s']:,.0f} tokens/s; merged accuracy {r['accuracy']:.3f}; "
        f"non-owned elements moved: {int(r['moved_outside_mask'])} (expected 0)"
    )


if __name__ == "__main__":
    main()
