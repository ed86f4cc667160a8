"""Error types. Every error says what was expected, what was found, and what happens next."""

from __future__ import annotations


class MedusaError(ValueError):
    """Base class of medusa-fed errors (a ValueError: callers' `except ValueError` still works)."""


class ConfigError(MedusaError):
    """A run, team or method configuration is invalid; raised at start, before any work."""


class PayloadError(MedusaError):
    """A payload (probe delta, mask, owned values, merged weights) is malformed or not allowed."""


class OwnershipError(MedusaError):
    """An ownership map or assignment input is inconsistent (unknown team, wrong shape, ...)."""


class MergeError(MedusaError):
    """Branches cannot be merged as asked (shape mismatch, unknown method, non-finite values)."""


class DataError(MedusaError):
    """A team's data cannot be used (missing file or column, unknown labels, empty split)."""


class ModelError(MedusaError):
    """A base model cannot be loaded or does not match the expected fingerprint."""


class StoreError(MedusaError):
    """A run directory or store entry is missing, corrupt, or fails its hash check."""


class StateMissing(MedusaError):
    """A team site lacks what a light request relies on (it restarted, or the weights it rebuilt
    fail their fingerprint); the coordinator sends that team the full payload instead."""
