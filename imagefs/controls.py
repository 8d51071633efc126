"""Control commands: the text written to a control file, checked, then sent as one engine call.

Each command is a small class in one table; a new control file (pull, push,
load, …) is one more entry. Parsing is pure and raises `BadCommand` before
anything reaches the engine; running returns the outcome a person reads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from . import references
from .engine import Engine
from .errors import BadCommand

MAX_COMMAND = 4096  # bytes in one write; a longer one is no command


def decode(data: bytes) -> str:
    """One command line from one write: UTF-8, a trailing newline dropped, nothing else tolerated."""
    if len(data) > MAX_COMMAND:
        raise BadCommand(f"command longer than {MAX_COMMAND} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise BadCommand("command is not UTF-8 text") from exc
    text = text.removesuffix("\n").removesuffix("\r")
    if "\n" in text or "\r" in text:
        raise BadCommand("one command per write: the text holds more than one line")
    if not text.isprintable():
        raise BadCommand("the command holds control or separator characters")
    return text.strip()


def human_size(n: int) -> str:
    """Bytes as `docker images` shows sizes (powers of 1000)."""
    if n < 1000:
        return f"{n} B"
    value = n / 1000
    units = ["kB", "MB", "GB", "TB"]
    while round(value, 1) >= 1000 and len(units) > 1:
        value /= 1000
        units.pop(0)
    return f"{value:.1f} {units[0]}"


class Command(ABC):
    """A control file's behaviour: its usage line, how it parses, what it sends, what its answer means."""

    usage: ClassVar[str]

    @abstractmethod
    def parse(self, text: str) -> Any:
        """The engine parameters for a command line, or BadCommand."""

    @abstractmethod
    async def send(self, engine: Engine, target: str, params: Any) -> Any:
        """The one engine call about `target`; the engine's answer."""

    @abstractmethod
    def describe(self, target: str, params: Any) -> str:
        """What the command does, as in "would tag x as y"."""

    @abstractmethod
    def report(self, target: str, params: Any, answer: Any) -> str:
        """The engine's answer as a person reads it."""

    async def run(self, engine: Engine, target: str, params: Any) -> str:
        """Send the command about `target`; the outcome as a person reads it."""
        answer = await self.send(engine, target, params)
        if engine.config.dry_run:  # the engine logged the request and sent nothing: no answer to report
            return f"dry-run: would {self.describe(target, params)}; nothing sent"
        return self.report(target, params, answer)


class Tag(Command):
    usage = "write 'repository[:tag]' to tag this image (the tag defaults to latest)"

    def parse(self, text: str) -> tuple[str, str]:
        try:
            return references.parse_tag_target(text)
        except ValueError as exc:
            raise BadCommand(str(exc)) from exc

    async def send(self, engine: Engine, target: str, params: tuple[str, str]) -> str:
        """The new reference as the engine spells it, where the tree shows it (podman: in full)."""
        await engine.tag(target, *params)
        return engine.flavor.spelled(":".join(params))

    def describe(self, target: str, params: tuple[str, str]) -> str:
        return f"tag {target} as {':'.join(params)}"

    def report(self, target: str, params: tuple[str, str], answer: str) -> str:
        return f"tagged {target} as {answer}"


class Delete(Command):
    usage = "write an empty line to remove this reference; words 'force' and 'noprune' set those parameters"

    def parse(self, text: str) -> dict[str, bool]:
        words = text.split()
        unknown = set(words) - {"force", "noprune"}
        if unknown:
            raise BadCommand(f"unknown word(s) {' '.join(sorted(unknown))!r}; use 'force' and/or 'noprune'")
        return {"force": "force" in words, "noprune": "noprune" in words}

    async def send(self, engine: Engine, target: str, params: dict[str, bool]) -> list[dict[str, str]] | None:
        return await engine.delete(target, **params)

    def describe(self, target: str, params: dict[str, bool]) -> str:
        words = [word for word, on in params.items() if on]
        return f"delete {target}" + (f" ({', '.join(words)})" if words else "")

    def report(self, target: str, params: dict[str, bool], answer: list[dict[str, str]] | None) -> str:
        lines = [f"{k.lower()} {v}" for item in answer or () for k, v in item.items()]
        return "\n".join(lines) or f"deleted {target}"


class Prune(Command):
    usage = "write '' (dangling only), 'all', 'until=24h', 'label=k', 'label=k=v' or 'label!=k' (space-separated)"

    def parse(self, text: str) -> dict[str, list[str]]:
        filters: dict[str, list[str]] = {}
        for word in text.split():
            if word == "all":
                filters.setdefault("dangling", []).append("false")
            elif word.startswith(("until=", "label=", "label!=")) and word.split("=", 1)[1]:
                key, value = word.split("=", 1)
                filters.setdefault(key, []).append(value)
            else:
                raise BadCommand(f"unknown prune filter {word!r}; {self.usage}")
        return filters

    async def send(self, engine: Engine, target: str, params: dict[str, list[str]]) -> dict[str, Any] | None:
        return await engine.prune(params)

    def describe(self, target: str, params: dict[str, list[str]]) -> str:
        shown = " ".join(f"{key}={value}" for key, values in params.items() for value in values)
        return f"prune images ({f'filters {shown}' if shown else 'dangling only'})"

    def report(self, target: str, params: dict[str, list[str]], answer: dict[str, Any] | None) -> str:
        deleted = (answer or {}).get("ImagesDeleted") or []
        lines = [f"{k.lower()} {v}" for item in deleted for k, v in item.items()]
        reclaimed = int((answer or {}).get("SpaceReclaimed") or 0)
        lines.append(f"{len(deleted)} entries removed, {human_size(reclaimed)} reclaimed ({reclaimed} bytes)")
        return "\n".join(lines)


COMMANDS: dict[str, Command] = {"tag": Tag(), "delete": Delete(), "prune": Prune()}
