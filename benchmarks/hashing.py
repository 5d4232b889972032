"""One stable short hash of JSON-able settings: job keys, protocol and recipe hashes, cohort
fingerprints. ``sort_keys`` makes it independent of dict order; ``default=str`` covers paths and
other non-JSON values. Changing this function changes every stored job's key."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(obj: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the sha256 of ``obj``'s canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]
