"""strata's union filesystem: read-only layer directories under an optional writable upper, served
through FUSE (pyfuse3/trio) with Linux overlayfs semantics and a precompiled lower index."""

__all__ = ["Change", "MountError", "MountSpec", "iter_changes", "mount", "mount_state", "unmount"]


def __getattr__(name: str):
    # lazily, so that importing one submodule (``unionfs.mount`` for a mount) loads only what it needs
    if name in ("Change", "iter_changes"):
        from . import changes

        return getattr(changes, name)
    if name in __all__:
        from . import mount

        return getattr(mount, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
