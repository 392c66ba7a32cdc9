"""Registry client: pull, push, login/logout, manifest inspect and search over the Distribution API.

`client` speaks HTTP (endpoint discovery, TLS policy, retries, auth), `auth` handles Docker's
`config.json` credentials and the bearer-token flow, `platform` picks a manifest out of an index,
and `pull` / `push` / `search` implement the commands on top of a `store.store.Store`.
"""

from .errors import RegistryError

__all__ = ["RegistryError"]
