"""medusa-fed: Medusa (FSE 2025) on Flower.

Several teams fine-tune one base model on private data. A cheap probe tells which parameter
elements each team would move most; every element gets one owner (``ownership``); each team
fine-tunes only what it owns (``masking``, ``training``); the coordinator merges the disjoint
deltas (``merging``). Payloads travel through ``codec``; stages persist in ``store``.
"""

__version__ = "0.1.0"
