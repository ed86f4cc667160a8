"""Merging: Medusa's Algorithm 3 and the six post-hoc baselines, on plain tensors.

``merge_states(base, deltas, MergeSpec("medusa"))`` adds each branch's delta to the base, tensor by
tensor; the same call with ``"linear"``, ``"task_arithmetic"``, ``"ties"``, ``"dare_linear"``,
``"dare_task_arithmetic"`` or ``"dare_ties"`` runs a baseline. The semantics of every method are
stated in :mod:`medusa_fed.merging.methods`; the steps (sparsify -> elect sign -> disjoint mean) are
small pure functions in :mod:`.sparsify` and :mod:`.election`.
"""

from medusa_fed.merging.election import agrees, disjoint_mean, elect_sign, signed_total
from medusa_fed.merging.merge import (
    check_finite,
    merge_report,
    merge_states,
    merge_states_with_report,
    merge_tensor,
    merge_tensor_with_report,
)
from medusa_fed.merging.report import TensorReport
from medusa_fed.merging.sparsify import (
    apply_keep,
    dare_keep_mask,
    dare_seed,
    magnitude_keep_mask,
    trim_count,
)
from medusa_fed.merging.spec import (
    METHODS,
    OWNERSHIP_METHODS,
    TUNABLE,
    MergeChoice,
    MergeSpec,
    MethodInfo,
    MethodName,
    method_defaults,
)

__all__ = [
    "METHODS",
    "OWNERSHIP_METHODS",
    "TUNABLE",
    "MergeChoice",
    "MergeSpec",
    "MethodInfo",
    "MethodName",
    "TensorReport",
    "agrees",
    "apply_keep",
    "check_finite",
    "dare_keep_mask",
    "dare_seed",
    "disjoint_mean",
    "elect_sign",
    "magnitude_keep_mask",
    "merge_report",
    "merge_states",
    "merge_states_with_report",
    "merge_tensor",
    "merge_tensor_with_report",
    "method_defaults",
    "signed_total",
    "trim_count",
]
