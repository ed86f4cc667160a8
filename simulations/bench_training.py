"""Masked vs unmasked fine-tuning step on the bundled MiniLM (or ``--model``): ratio and memory.

Run: ``python -m simulations.bench_training [--steps 12] [--density 0.333] [--device auto]
[--model smollm2-135m-instruct --methods lora,ia3]``
(about 2 minutes on 2 CPU cores; ``--device cuda`` times the steps on a GPU, bf16 autocast).
Two identical team models train on the same batches, steps interleaved (unmasked, masked,
unmasked, ...) so machine load hits both alike; the table gives the median step time of each
and their ratio, for full fine-tuning and LoRA, the unmasked step's tokens per second (training)
and a gradient-free forward pass's on the same batch (scoring), and the
median time of the guard's own work (gradient masking + restore, re-run after a step; a
load-robust overhead estimate) as a share of the unmasked step. Memory: the bytes the mask guard
holds (exact) next to the parameter and AdamW-state bytes, and the process RSS growth when the
guard is created.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm.auto import tqdm

from medusa_fed.masking import MaskedUpdate
from medusa_fed.training.config import ModelSpec, TrainConfig
from medusa_fed.training.data import Split
from medusa_fed.training.device import autocast, resolve_device
from medusa_fed.training.loop import adamw, encode
from medusa_fed.training.models import BaseModel, TeamModel, load_base

TEXT = "the film is a slow , thoughtful and often very funny look at love and loss " * 8


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(
    team: TeamModel,
    opt: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    device: torch.device,
) -> float:
    _sync(device)
    start = time.perf_counter()
    with autocast(device):
        loss = team.module(**batch).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in team.module.parameters() if p.requires_grad], 1.0)
    opt.step()
    _sync(device)
    return time.perf_counter() - start


def _forward(team: TeamModel, batch: dict[str, torch.Tensor], device: torch.device) -> float:
    """One gradient-free forward pass over the batch: what scoring (rank classification,
    evaluation) costs per token."""
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad(), autocast(device):
        team.module(**batch)
    _sync(device)
    return time.perf_counter() - start


def _guard_work(guard: MaskedUpdate, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    guard.mask_gradients()
    guard.after_step()
    _sync(device)
    return time.perf_counter() - start


def bench(
    method: str,
    steps: int,
    density: float,
    batch_size: int,
    device: str = "cpu",
    model: str = "all-MiniLM-L6-v2",
) -> dict[str, float]:
    """Median masked and unmasked step times of ``method`` on ``device`` (see module doc); a
    causal LM (``--model smollm2-135m-instruct``) takes next-token steps on the same text."""
    where = resolve_device(device)
    base: BaseModel = load_base(ModelSpec(source=model, method=method))  # type: ignore[arg-type]
    causal = not base.is_classifier
    cfg = TrainConfig(batch_size=batch_size)
    lr = cfg.lr_for(base.spec.method)
    ids = () if causal else (0, 1) * (batch_size // 2) + (0,) * (batch_size % 2)
    split = Split((TEXT,) * batch_size, ids)
    batch = encode(base.tokenizer, split, list(range(batch_size)), cfg.max_length, causal=causal)
    tokens = int(batch["attention_mask"].sum())
    batch = {k: v.to(where) for k, v in batch.items()}
    labels = None if causal else 2
    plain, masked = base.build(labels), base.build(labels)
    plain.module.to(where)
    masked.module.to(where)
    opts = [
        adamw([p for p in t.module.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
        for t in (plain, masked)
    ]
    gen = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(s, generator=gen) < density for n, s in base.shapes.items()}
    rss0 = _rss()
    guard = MaskedUpdate(masked.shared, masks, opts[1])
    rss_guard = _rss() - rss0
    guard_bytes = guard.nbytes
    times: dict[str, list[float]] = {"plain": [], "masked": [], "guard": [], "score": []}
    for i in tqdm(range(steps + 2), desc=f"bench {method}", unit="pair", disable=None):
        for name, team, opt in (("plain", plain, opts[0]), ("masked", masked, opts[1])):
            seconds = _step(team, opt, batch, where)
            if i >= 2:  # first two pairs warm up allocator and caches
                times[name].append(seconds)
        if i >= 2:  # the guard's own work again (both parts are idempotent): load-robust cost
            times["guard"].append(_guard_work(guard, where))
            times["score"].append(_forward(plain, batch, where))
    plain_s, masked_s = statistics.median(times["plain"]), statistics.median(times["masked"])
    guard_s = statistics.median(times["guard"])
    params = sum(p.numel() * p.element_size() for p in masked.shared.values())
    return {
        "plain_s": plain_s,
        "masked_s": masked_s,
        "ratio": masked_s / plain_s,
        "tokens_per_s": tokens / plain_s,
        "score_tokens_per_s": tokens / statistics.median(times["score"]),
        "guard_s": guard_s,
        "guard_share": guard_s / plain_s,
        "shared_MB": params / 2**20,
        "adam_MB": 2 * params / 2**20,
        "guard_MB": guard_bytes / 2**20,
        "rss_guard_MB": rss_guard / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed step pairs per method")
    parser.add_argument("--density", type=float, default=1 / 3, help="owned fraction")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="bundled, packaged or a dir")
    args = parser.parse_args()
    rows = {
        m: bench(m, args.steps, args.density, args.batch_size, args.device, args.model)
        for m in args.methods.split(",")
    }
    cols = ["plain_s", "masked_s", "ratio", "tokens_per_s", "score_tokens_per_s", "guard_s"]
    cols += ["guard_share"]
    cols += ["shared_MB", "adam_MB", "guard_MB", "rss_guard_MB"]
    print(
        f"device={resolve_device(args.device)} threads={torch.get_num_threads()} "
        f"steps={args.steps} density={args.density:.3f} "
        f"batch={args.batch_size} (128-token sequences)"
    )
    print(f"{'method':8}" + "".join(f" {c:>{max(14, len(c))}}" for c in cols))
    for method, row in rows.items():
        print(f"{method:8}" + "".join(f" {row[c]:>{max(14, len(c))}.3f}" for c in cols))


if __name__ == "__main__":
    main()
