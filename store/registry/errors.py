"""Errors of the registry client; each is one line a user can act on."""

from store.errors import StoreError


class RegistryError(StoreError):
    """A registry could not be reached, refused us, or answered something unusable."""


class AuthError(RegistryError):
    """401/403: missing or wrong credentials, or no access to the repository."""


class NotFoundError(RegistryError):
    """404: unknown repository, tag, manifest or blob."""


def unwrap(exc: BaseException) -> BaseException:
    """The error to show for an exception group from a nursery: its first user error, else itself."""
    if isinstance(exc, BaseExceptionGroup):
        leaves: list[BaseException] = []
        stack: list[BaseException] = [exc]
        while stack:
            e = stack.pop(0)
            if isinstance(e, BaseExceptionGroup):
                stack[:0] = list(e.exceptions)
            else:
                leaves.append(e)
        for kind in (KeyboardInterrupt, StoreError):
            for leaf in leaves:
                if isinstance(leaf, kind):
                    return leaf
    return exc


def run(async_fn, *args):  # noqa: ANN001, ANN002, ANN201
    """`trio.run`, re-raising a nursery's user error as itself (one line for the CLI)."""
    import trio

    try:
        return trio.run(async_fn, *args)
    except BaseExceptionGroup as eg:
        leaf = unwrap(eg)
        if leaf is eg:
            raise
        raise leaf from None
