"""Ownership assignment (the paper's Algorithm 1, GPA): one owner per parameter element.

- :mod:`.ownership_map`: the map (uint8 owner ids, masks, safetensors save/load);
- :mod:`.candidates`: the direction rule (which teams may own an element, with what weight);
- :mod:`.assign`: the policies "proportional" (the paper), "argmax", "balanced";
- :mod:`.balanced`: the capacity-constrained policy, streamed with dual prices;
- :mod:`.optimum`: the exact MILP optimum on small instances, and the kept-magnitude objective.
"""

from medusa_fed.ownership.assign import Policy, Unselected, assign_ownership
from medusa_fed.ownership.balanced import capacities
from medusa_fed.ownership.optimum import Optimum, assignment_objective, optimal_assignment
from medusa_fed.ownership.ownership_map import MAX_TEAMS, NO_OWNER, OwnershipMap

__all__ = [
    "MAX_TEAMS",
    "NO_OWNER",
    "Optimum",
    "OwnershipMap",
    "Policy",
    "Unselected",
    "assign_ownership",
    "assignment_objective",
    "capacities",
    "optimal_assignment",
]
