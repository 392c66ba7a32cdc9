"""strata's image store, usable as a library: `from store import Store`.

s = Store("/var/lib/strata")
image = s.resolve("alpine")
s.layer_dirs(image)   # the read-only layer directories, topmost first
"""

from .errors import Ambiguous, Conflict, DigestMismatch, InvalidInput, NotFound, StoreError
from .store import Store

__all__ = ["Store", "StoreError", "NotFound", "Ambiguous", "Conflict", "InvalidInput", "DigestMismatch"]
