"""Errors of the registry client; each is one line a user can act on."""

from store.errors import StoreError


class RegistryError(StoreError):
    """A registry could not be reached, refused us, or answered something unusable."""


class AuthError(RegistryError):
    """401/403: missing or wrong credentials, or no access to the repository."""


class NotFoundError(RegistryError):
    """404: unknown repository, tag, manifest or blob."""
