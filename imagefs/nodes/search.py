"""`.imagefs/search/`: the engine's ImageSearch as generated files, `[REGISTRY/]TERM[,OPTION…]`.

A search runs when its name is looked up, so `stat` gives the exact size of what `cat` reads
(pretty JSON of the engine's answer, as `inspect`). Answers are kept briefly per name; a listing
shows only those kept, and never searches. A first component that the engine would take for a
registry host (it holds `.` or `:`, or is `localhost`: registry/service.go splitReposSearchTerm)
is a directory of that registry's terms. Options follow the first `,`, percent-decoded:
`limit=N` (1–100), `stars=N`, `official`, `automated`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import unquote

from ..catalog import pretty
from ..engine import remote
from ..errors import BadCommand
from ..references import TreePath
from .base import Context, Dir, Node, Stat, dir_stat
from .documents import DocumentFile

MAX_LIMIT = 100  # the engine refuses a limit outside 1..100
_FLAGS = {"official": "is-official", "automated": "is-automated"}


def is_registry(name: str) -> bool:
    return "," not in name and ("." in name or ":" in name or name == "localhost")


def parsed(name: str) -> tuple[str, int | None, dict[str, list[str]]]:
    """A search file's name as the engine's term, limit and filters; BadCommand before any request."""
    term, _, options = name.partition(",")
    limit, filters = None, dict[str, list[str]]()
    for option in options.split(",") if options else ():
        key, eq, value = unquote(option).partition("=")
        if key in ("limit", "stars") and eq and value.isdigit():
            if key == "limit" and not 1 <= int(value) <= MAX_LIMIT:
                raise BadCommand(f"limit {value} is outside the range of [1, {MAX_LIMIT}]")
            limit = int(value) if key == "limit" else limit
            if key == "stars":
                filters["stars"] = [value]
        elif key in _FLAGS and value in ("", "true", "false"):
            filters[_FLAGS[key]] = [value or "true"]
        else:
            raise BadCommand(f"unknown search option {option!r}: use limit=N, stars=N, official, automated")
    if not term or term.endswith("/"):
        raise BadCommand("a search needs a term")
    return term, limit, filters


async def searched(ctx: Context, name: str) -> tuple[bytes, int]:
    """The answer for a search name (with its registry), kept briefly: its bytes and when it was had."""
    found = ctx.searches.get(name)
    if found is None:
        answer = await remote.search(ctx.catalog.engine, *parsed(name))
        found = ctx.searches[name] = (pretty(answer), int(time.time()))
    return found


@dataclass
class SearchDir(Dir):
    ctx: Context
    path: TreePath
    registry: str = ""  # "" for search/ itself, else search/REGISTRY/

    def _name(self, name: str) -> str:
        return f"{self.registry}/{name}" if self.registry else name

    async def stat(self) -> Stat:
        return dir_stat((await self.ctx.catalog.snapshot()).newest.get((), 0))

    async def lookup(self, name: str) -> Node | None:
        if name.startswith("."):  # no term: what tools look for (.git, .hidden), answered without a search
            return None
        if not self.registry and is_registry(name):
            return SearchDir(self.ctx, (*self.path, name), name)
        data, mtime = await searched(self.ctx, self._name(name))
        return DocumentFile((*self.path, name), data, mtime)

    async def entries(self) -> list[tuple[str, Node]]:
        # What is kept (listing never searches); one that expires meanwhile is left out.
        kept = [(key, found) for key in list(self.ctx.searches) if (found := self.ctx.searches.get(key))]
        if self.registry:
            prefix = self.registry + "/"
            return [(key.removeprefix(prefix), DocumentFile((*self.path, key.removeprefix(prefix)), data, mtime))
                    for key, (data, mtime) in kept if key.startswith(prefix)]
        hosts = sorted({key.split("/", 1)[0] for key, _ in kept if "/" in key and is_registry(key.split("/")[0])})
        terms = [(key, DocumentFile((*self.path, key), data, mtime)) for key, (data, mtime) in kept if "/" not in key]
        return [*((host, SearchDir(self.ctx, (*self.path, host), host)) for host in hosts), *terms]
