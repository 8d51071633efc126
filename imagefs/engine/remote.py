"""The image operations that reach registries or leave new images: pull, push, search, commit, build prune.

pull and push answer with a message stream (client.Engine.post_stream), entered once the engine
has answered and then read to its end by the caller; the others are single calls. pull, push and
search carry the docker CLI's credentials for the registry of their reference (auth), read anew
for each operation. Nothing here knows FUSE or paths.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..errors import EngineError
from . import auth, messages
from .client import Engine, quote_name


async def _auth_header(engine: Engine, reference: str) -> dict[str, str]:
    return {"X-Registry-Auth": await auth.registry_auth(reference, engine.config.timeout)}


@contextlib.asynccontextmanager
async def pull(engine: Engine, name: str, tag: str, platform: str | None = None
               ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    """ImageCreate fromImage: `tag` is a tag or a digest, never empty (empty would pull every tag)."""
    params = [("fromImage", name), ("tag", tag), *([("platform", platform)] if platform else [])]
    headers = await _auth_header(engine, name)
    async with engine.post_stream("/images/create", params, headers) as stream:
        yield stream


@contextlib.asynccontextmanager
async def push(engine: Engine, name: str, tag: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    """ImagePush of one tag of a repository (an empty tag would push every tag)."""
    headers = await _auth_header(engine, name)
    async with engine.post_stream(f"/images/{quote_name(name)}/push", [("tag", tag)], headers) as stream:
        yield stream


async def search(engine: Engine, term: str, limit: int | None = None,
                 filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """ImageSearch; an index without the v1 search API is NotSupported."""
    params = [("term", term), *([("limit", str(limit))] if limit else []),
              *([("filters", json.dumps(filters))] if filters else [])]
    try:
        # The term's registry decides whose credentials: "nginx" is Docker Hub's.
        return await engine._call("GET", "/images/search", params, headers=await _auth_header(engine, term))
    except EngineError as exc:
        raise messages.search_refined(exc) from None


async def commit(engine: Engine, container: str, repo: str, tag: str, options: Sequence[tuple[str, str]]
                 ) -> dict[str, Any] | None:
    """ImageCommit: `options` are comment, author, pause and any number of changes."""
    params = [("container", container), *([("repo", repo), ("tag", tag)] if repo else []), *options]
    return await engine._call("POST", "/commit", params, mutation=True, json_body={})


async def build_prune(engine: Engine, every: bool, keep_storage: int | None,
                      filters: dict[str, list[str]]) -> dict[str, Any] | None:
    params = [*([("all", "true")] if every else []),
              *([("keep-storage", str(keep_storage))] if keep_storage is not None else []),
              *([("filters", json.dumps(filters))] if filters else [])]
    return await engine._call("POST", "/build/prune", params, mutation=True)
