"""The Medusa protocol between coordinator and team sites: stage names, message types, record keys.

Both ends import these names, so a typo cannot split them. One run::

    0 HELLO     query.hello       coordinator -> team: base fingerprint, model spec, run settings
                                  <- its fingerprint, task description, controlled?
    1 PROBE     train.probe       -> probe budget, density     <- top-d sparse delta (idx + fp16)
    2 ASSIGN    (coordinator only: GPA ownership map)
    3 TRAIN     train.finetune    -> the team's bit-packed mask <- owned values only, in mask order
                                     (uncontrolled team: no mask <- full dense delta)
                                  with rounds = R > 1, TRAIN repeats R times: round r > 1 also
                                  sends the merge of the rounds so far (dense fp32) and the team's
                                  previous head; the team continues from there
      BASELINE  train.free        -> no mask (only when post-hoc baselines are compared)
                                  <- full dense delta of an unmasked fine-tune
    4 MERGE     (coordinator only)
    5 EVAL      evaluate.merged   -> merged shared weights of one method <- metrics only

Record keys inside a message's RecordDict are the ``*_KEY`` constants below.
"""

from __future__ import annotations

from typing import Final

PROTOCOL_VERSION: Final = 1

STAGES: Final = ("hello", "probe", "assign", "train", "baseline", "merge", "eval", "report")

MSG_HELLO: Final = "query.hello"
MSG_PROBE: Final = "train.probe"
MSG_TRAIN: Final = "train.finetune"
MSG_FREE: Final = "train.free"
MSG_EVAL: Final = "evaluate.merged"

CONFIG_KEY: Final = "config"  # ConfigRecord: settings sent with a request / facts in a reply
ARRAYS_KEY: Final = "arrays"  # ArrayRecord: the payload (codec layout)
HEAD_KEY: Final = "head"  # ArrayRecord: a team's own classification head (never merged)
START_KEY: Final = "start"  # ArrayRecord: shared weights a round starts from (rounds > 1)
METRICS_KEY: Final = "metrics"  # MetricRecord: evaluation metrics
