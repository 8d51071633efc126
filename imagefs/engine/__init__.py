"""The Docker Engine API client, in layers that each know only the ones below:

- `address`    where the engine is (EngineConfig, as the docker CLI reads it) and the one way
               to reach it (Endpoint.connect, Endpoint.open_stream)
- `framing`    HTTP/1 response heads and body framing, without I/O
- `transport`  httpx over the endpoint's connections (an httpcore network backend)
- `bulkget`    the export GET: HTTP/1.0 on a socket of its own, spliced or through buffers
- `client`     Engine: API version, calls, streams, status → error
- `flavor`     which engine answers (dockerd, its containerd image store, podman) and what
               imagefs does differently for each
- `auth`       registry credentials as the docker CLI finds them → X-Registry-Auth / -Config

The rest of imagefs imports from here.
"""

from .address import DEFAULT_HOST, Endpoint, EngineConfig
from .client import MAX_ERROR_BODY, PREFERRED_API, Engine, quote_name
from .flavor import Flavor

__all__ = ["DEFAULT_HOST", "MAX_ERROR_BODY", "PREFERRED_API", "Endpoint", "Engine", "EngineConfig", "Flavor",
           "quote_name"]
