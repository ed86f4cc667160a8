"""Merge methods: a registry of named settings (mergekit style) and the validated MergeSpec.

Every method is the same three-step pipeline on each tensor's branch deltas, with a different choice
per step (see :mod:`medusa_fed.merging.methods` for the exact semantics):

=======================  ===============  ========================  =========================
method                   sparsify         combine                   spec fields it reads
=======================  ===============  ========================  =========================
medusa                   none             sum; sign election where  scale
                                          an uncontrolled branch
                                          overlaps (Algorithm 3)
linear                   none             mean over all branches    (none)
task_arithmetic          none             sum                       scale
ties                     magnitude trim   TIES elect + disjoint     density, scale
                                          mean
dare_linear              DARE drop        mean over all branches    drop_rate, seed
dare_task_arithmetic     DARE drop        sum                       drop_rate, seed, scale
dare_ties                DARE drop        TIES elect + disjoint     drop_rate, seed, scale
                                          mean
tsv_m                    none             task singular vectors,    scale
                                          orthogonalized (spectral)
iso_c                    none             summed deltas, flat       scale
                                          spectrum (spectral)
iso_cts                  none             common + task-specific    common_fraction, scale
                                          subspaces, flat spectrum
medusa_tsv               none             owned deltas: TSV-M on    scale
                                          matrices, medusa on the
                                          rest
=======================  ===============  ========================  =========================
"""

from __future__ import annotations

import logging
import math
from dataclasses import MISSING, dataclass, field, fields
from itertools import product
from typing import Any, Literal

from medusa_fed.errors import ConfigError

logger = logging.getLogger(__name__)

MethodName = Literal[
    "medusa",
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_task_arithmetic",
    "dare_ties",
    "tsv_m",
    "iso_c",
    "iso_cts",
    "medusa_tsv",
]
Sparsify = Literal["none", "magnitude", "dare"]
Combine = Literal["medusa", "medusa_tsv", "mean", "sum", "ties", "tsv", "iso", "iso_cts"]


@dataclass(frozen=True)
class MethodInfo:
    """One registry entry: what a merge method does and which :class:`MergeSpec` fields it reads."""

    name: str
    description: str
    sparsify: Sparsify  # per-branch step before combining: nothing, TIES trim, or DARE drop
    combine: Combine  # how the (sparsified) branch deltas become one delta
    uses: tuple[str, ...]  # MergeSpec fields the method reads; the others are ignored


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo(
            "medusa",
            "Medusa Algorithm 3: base + scale * sum of (disjoint) deltas; sign election + mean "
            "of the agreeing deltas where an uncontrolled branch overlaps another branch",
            "none",
            "medusa",
            ("scale",),
        ),
        MethodInfo("linear", "plain average of the tuned models", "none", "mean", ()),
        MethodInfo(
            "task_arithmetic",
            "base + scale * sum of deltas (Ilharco et al.)",
            "none",
            "sum",
            ("scale",),
        ),
        MethodInfo(
            "ties",
            "TIES (Yadav et al.): per-tensor top-density trim, elect sign of the trimmed sum, "
            "mean of the agreeing deltas, times scale",
            "magnitude",
            "ties",
            ("density", "scale"),
        ),
        MethodInfo(
            "dare_linear",
            "DARE drop + rescale, then plain average",
            "dare",
            "mean",
            ("drop_rate", "seed"),
        ),
        MethodInfo(
            "dare_task_arithmetic",
            "DARE drop + rescale, then base + scale * sum",
            "dare",
            "sum",
            ("drop_rate", "seed", "scale"),
        ),
        MethodInfo(
            "dare_ties",
            "DARE drop + rescale replaces the TIES trim; then TIES sign election + disjoint mean",
            "dare",
            "ties",
            ("drop_rate", "seed", "scale"),
        ),
        MethodInfo(
            "tsv_m",
            "TSV-M (Gargiulo et al. 2025): each branch's top singular vectors of every weight "
            "matrix, concatenated, orthogonalized (polar factor), times scale; other tensors: mean",
            "none",
            "tsv",
            ("scale",),
        ),
        MethodInfo(
            "iso_c",
            "Iso-C (Marczak et al. 2025): SVD of the summed deltas of every weight matrix with a "
            "flat spectrum (all singular values set to their mean), times scale; others: mean",
            "none",
            "iso",
            ("scale",),
        ),
        MethodInfo(
            "iso_cts",
            "Iso-CTS (Marczak et al. 2025): the summed deltas' top common_fraction singular "
            "directions plus each branch's top directions outside them, orthogonalized, with a "
            "flat spectrum, times scale; others: mean",
            "none",
            "iso_cts",
            ("common_fraction", "scale"),
        ),
        MethodInfo(
            "medusa_tsv",
            "Medusa's owned deltas merged TSV-style: TSV-M (each branch's top singular vectors, "
            "orthogonalized) on every weight matrix, Algorithm 3 on the other tensors, times scale",
            "none",
            "medusa_tsv",
            ("scale",),
        ),
    )
}

# the methods that merge a Medusa run's masked (owned) branches: a run whose merge is one of these
# probes, assigns owners and trains masked; any other merge is a post-hoc baseline run
OWNERSHIP_METHODS = ("medusa", "medusa_tsv")

# the settings a merge text may carry (``key=value``), in MergeSpec field order
TUNABLE = ("scale", "density", "drop_rate", "seed", "common_fraction")


@dataclass(frozen=True)
class MergeSpec:
    """A merge method and its settings, validated once here.

    method : MethodName
        Name of a :data:`METHODS` entry.
    scale : float (default: 1.0)
        lambda applied to the merged delta (medusa, task arithmetic, TIES and their DARE variants).
    density : float (default: 0.2)
        TIES trim: fraction of each branch's delta kept per tensor (largest magnitudes), in (0, 1].
    drop_rate : float (default: 0.9)
        DARE: probability p of dropping each delta element, in [0, 1); survivors are scaled by
        1 / (1 - p).
    seed : int (default: 0)
        DARE: drop masks are drawn from a generator seeded by (seed, tensor name, branch name), so
        they do not depend on the order in which branches or tensors are visited.
    common_fraction : float (default: 0.8)
        Iso-CTS: share of each matrix's rank given to the common subspace (the summed deltas' top
        singular directions), in (0, 1]; the rest is split evenly between the branches.
    """

    method: MethodName = field(metadata={"help": "merge method, a key of METHODS"})
    scale: float = field(default=1.0, metadata={"help": "lambda on the merged delta"})
    density: float = field(default=0.2, metadata={"help": "TIES: kept fraction per tensor"})
    drop_rate: float = field(default=0.9, metadata={"help": "DARE: drop probability p"})
    seed: int = field(default=0, metadata={"help": "DARE: seed of the drop masks"})
    common_fraction: float = field(
        default=0.8, metadata={"help": "Iso-CTS: rank share of the common subspace"}
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"unknown merge method {self.method!r}; expected one of {', '.join(METHODS)}; "
                "no merge was run"
            )
        if isinstance(self.scale, bool) or not math.isfinite(float(self.scale)):
            raise ConfigError(f"merge scale must be a finite number, found {self.scale!r}")
        if not 0.0 < float(self.density) <= 1.0:
            raise ConfigError(f"merge density must be in (0, 1], found {self.density!r}")
        if not 0.0 <= float(self.drop_rate) < 1.0:
            raise ConfigError(f"merge drop_rate must be in [0, 1), found {self.drop_rate!r}")
        if not 0.0 < float(self.common_fraction) <= 1.0:
            raise ConfigError(
                f"merge common_fraction must be in (0, 1], found {self.common_fraction!r}"
            )
        # run configs carry every setting as a float: accept an integral float seed (3.0 -> 3)
        if isinstance(self.seed, bool) or float(self.seed) != int(self.seed):
            raise ConfigError(f"merge seed must be an integer, found {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        for name in ("scale", "density", "drop_rate", "common_fraction"):
            object.__setattr__(self, name, float(getattr(self, name)))
        ignored = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name in TUNABLE
            and f.name not in self.info.uses
            and getattr(self, f.name) != f.default
        ]
        if ignored:
            logger.warning(
                "merge spec: method %r ignores %s (it reads only: %s)",
                self.method,
                ", ".join(ignored),
                ", ".join(self.info.uses) or "nothing",
            )

    @property
    def info(self) -> MethodInfo:
        return METHODS[self.method]


@dataclass(frozen=True)
class MergeChoice:
    """A merge method with its settings as a user writes them, and the one parser of that text.

    ``method[:key=value[|value...]]...``: ``medusa``, ``ties:density=0.2:scale=1``,
    ``dare_ties:drop_rate=0.9:scale=0.5|1``. A key with several values (``|``) is a grid: the
    coordinator merges each combination, scores it on the teams' validation splits and keeps the
    best (the test split is scored once, for that one). The canonical text (:attr:`label`) names
    the method in tables, run directories, reports and the branch history.
    """

    method: MethodName
    params: tuple[tuple[str, tuple[float, ...]], ...] = ()

    @classmethod
    def parse(cls, text: str) -> MergeChoice:
        name, *parts = [p.strip() for p in str(text).strip().split(":")]
        name = name.replace("-", "_")
        if name not in METHODS:
            raise ConfigError(
                f"unknown merge method {name!r}; expected one of {', '.join(METHODS)}"
            )
        params: dict[str, tuple[float, ...]] = {}
        for part in parts:
            key, sep, value = part.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in TUNABLE:
                raise ConfigError(
                    f"merge setting {part!r} in {text!r}: expected key=value with key one of "
                    f"{', '.join(TUNABLE)}"
                )
            try:
                params[key] = tuple(float(v) for v in value.split("|"))
            except ValueError:
                raise ConfigError(
                    f"merge setting {part!r} in {text!r}: value is not a number"
                ) from None
        choice = cls(name, tuple(params.items()))  # type: ignore[arg-type]
        for candidate in choice.candidates():  # every combination must be a valid MergeSpec
            choice.spec(candidate, seed=0)
        return choice

    @property
    def label(self) -> str:
        """The canonical text: ``ties`` or ``ties:density=0.2:scale=0.5|1``."""
        return ":".join(
            [self.method, *(f"{k}={'|'.join(f'{v:g}' for v in vs)}" for k, vs in self.params)]
        )

    def candidates(self) -> list[dict[str, float]]:
        """Every combination of the settings' values (one dict when nothing is a grid)."""
        keys = [k for k, _ in self.params]
        return [
            dict(zip(keys, combo, strict=True)) for combo in product(*(v for _, v in self.params))
        ]

    def spec(self, params: dict[str, float], seed: int) -> MergeSpec:
        """The MergeSpec of one candidate; the run's seed unless the choice sets its own."""
        uses_seed = "seed" in METHODS[self.method].uses
        settings: dict[str, Any] = {"seed": seed, **params} if uses_seed else dict(params)
        return MergeSpec(self.method, **settings)


def method_defaults(method: str) -> dict[str, float | int]:
    """The default value of every :class:`MergeSpec` field that ``method`` reads."""
    if method not in METHODS:
        raise ConfigError(f"unknown merge method {method!r}; expected one of {', '.join(METHODS)}")
    out: dict[str, float | int] = {}
    for f in fields(MergeSpec):
        if f.name in METHODS[method].uses and f.default is not MISSING:
            out[f.name] = f.default  # type: ignore[assignment]
    return out
