"""strata's union filesystem: read-only layer directories under an optional writable upper, served
through FUSE (pyfuse3/trio) with Linux overlayfs semantics and a precompiled lower index."""

from .changes import Change, iter_changes
from .mount import MountError, MountSpec, mount, mount_state, unmount

__all__ = ["Change", "MountError", "MountSpec", "iter_changes", "mount", "mount_state", "unmount"]
