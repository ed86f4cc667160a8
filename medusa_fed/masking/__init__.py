"""Masked fine-tuning (paper Algorithm 2): bit-exact "only owned elements move" for any optimizer.

See :mod:`medusa_fed.masking.masked_update` for the mechanism and its memory/time costs.
"""

from medusa_fed.masking.mask_files import load_mask, mask_from_ownership
from medusa_fed.masking.masked_update import MaskedUpdate, MaskError, check_masks

__all__ = [
    "MaskError",
    "MaskedUpdate",
    "check_masks",
    "load_mask",
    "mask_from_ownership",
]
