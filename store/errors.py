"""Errors the store raises. Each carries a one-line message meant for the user."""


class StoreError(Exception):
    """Base of every error a user can cause; the CLI prints it as one line."""


class NotFound(StoreError):
    """A reference, image, layer or blob that the store does not have."""


class Ambiguous(StoreError):
    """An ID prefix that matches more than one image."""


class Conflict(StoreError):
    """An operation refused because something still depends on its target."""


class InvalidInput(StoreError):
    """Malformed archives, tars, references, configs or digests."""


class DigestMismatch(InvalidInput):
    """Content whose digest is not the one it was announced with."""
