"""EXPORT: the run's own merge as one loadable folder per team.

``merged/<method>/<team>/`` is a Hugging Face model folder (or a PEFT adapter folder) of the merged
shared weights with the team's own head: the re-fitted one when EVAL re-fitted it, else the head
it trained. A classifier team that kept its head private (share-head = false) gets none.
"""

from __future__ import annotations

import logging

from medusa_fed.pipeline.merge import slug
from medusa_fed.pipeline.state import RunState
from medusa_fed.training.export import save_model_dir

log = logging.getLogger(__name__)


def export(state: RunState) -> None:
    label = state.config.merge.label
    if label not in state.merged:
        return
    merged = state.merged[label]
    heads = (state.masked if state.config.uses_ownership else state.free).heads
    for team in state.roster.active:
        head = heads.get(team)
        refit = f"eval/{slug(label)}/{team}.head.safetensors"
        if head and state.run_dir.exists(refit, verify=True):
            head, _ = state.run_dir.read_tensors(refit)
        if state.base.is_classifier and not head:
            continue  # the team keeps its head private (share-head = false)
        labels = tuple(state.roster.hello[team].labels) if state.base.is_classifier else ()
        out = state.run_dir.file_path(f"merged/{slug(label)}/{team}")
        save_model_dir(state.base, out, merged, head or None, labels=labels or None)
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            state.run_dir.record_file(path.relative_to(state.run_dir.path).as_posix())
    log.info("export: %s written for %d team(s)", label, len(state.roster.active))
