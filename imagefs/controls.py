"""Control commands: the text written to a control file, checked, then sent as one engine call.

Each command is a small class in one table; a new control file (pull, push,
load, …) is one more entry. Parsing is pure and raises `BadCommand` before
anything reaches the engine; running returns the outcome a person reads.
"""

from __future__ import annotations

import re
import shlex
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from . import references
from .activity import Operation
from .engine import Engine, remote
from .errors import BadCommand
from .options import size

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
    kind: ClassVar[str] = ""  # a long operation's kind in `status` (pull, push); "" for a quick call

    @abstractmethod
    def parse(self, text: str) -> Any:
        """The engine parameters for a command line, or BadCommand."""

    @abstractmethod
    async def send(self, engine: Engine, target: str, params: Any, op: Operation | None) -> Any:
        """The one engine call about `target`; the engine's answer. A long one follows it in `op`."""

    def subject(self, target: str, params: Any) -> str:
        """What a long operation is about, as `status` names it."""
        return target

    @abstractmethod
    def describe(self, target: str, params: Any) -> str:
        """What the command does, as in "would tag x as y"."""

    @abstractmethod
    def report(self, target: str, params: Any, answer: Any) -> str:
        """The engine's answer as a person reads it."""

    async def run(self, engine: Engine, target: str, params: Any, op: Operation | None = None) -> str:
        """Send the command about `target`; the outcome as a person reads it."""
        answer = await self.send(engine, target, params, op)
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

    async def send(self, engine: Engine, target: str, params: tuple[str, str], op: Operation | None) -> str:
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

    async def send(self, engine: Engine, target: str, params: dict[str, bool],
                   op: Operation | None) -> list[dict[str, str]] | None:
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

    async def send(self, engine: Engine, target: str, params: dict[str, list[str]],
                   op: Operation | None) -> dict[str, Any] | None:
        return await engine.prune(params)

    def describe(self, target: str, params: dict[str, list[str]]) -> str:
        shown = " ".join(f"{key}={value}" for key, values in params.items() for value in values)
        return f"prune images ({f'filters {shown}' if shown else 'dangling only'})"

    def report(self, target: str, params: dict[str, list[str]], answer: dict[str, Any] | None) -> str:
        deleted = (answer or {}).get("ImagesDeleted") or []
        lines = [f"{k.lower()} {v}" for item in deleted for k, v in item.items()]
        reclaimed = int((answer or {}).get("SpaceReclaimed") or 0)
        lines.append(f"{len(deleted)} entries removed, {_reclaimed(reclaimed)}")
        return "\n".join(lines)


def _reclaimed(n: int) -> str:
    return f"{human_size(n)} reclaimed ({n} bytes)"


PLATFORM = re.compile(r"[a-z0-9_-]+/[a-z0-9_-]+(?:/[a-z0-9_.-]+)?")


async def _followed(stream: Any, op: Operation | None) -> None:
    """Read a message stream to its end, each message into the operation's record."""
    async for message in stream:
        if op is not None:
            op.follow(message)


class Pull(Command):
    usage = ("write 'REFERENCE [platform=os/arch[/variant]]' to pull it (the tag defaults to latest); "
             "while a pull runs, reads show its progress")
    kind = "pull"

    def parse(self, text: str) -> tuple[str, str, str | None]:
        words = text.split()
        ref = references.parse(words[0]) if words else None
        if ref is None:
            raise BadCommand(f"invalid reference format: {text!r}; {self.usage}")
        refused = references.engine_refusal(ref.name)
        if refused:
            raise BadCommand(refused)
        platform = None
        for word in words[1:]:
            if not (word.startswith("platform=") and PLATFORM.fullmatch(word.removeprefix("platform="))):
                raise BadCommand(f"unknown word {word!r}; {self.usage}")
            platform = word.removeprefix("platform=")
        return ref.name, ref.digest or ref.tag or "latest", platform  # never "": that pulls every tag

    def subject(self, target: str, params: tuple[str, str, str | None]) -> str:
        name, tag, _ = params
        return f"{name}{'@' if ':' in tag else ':'}{tag}"  # a digest holds ":", a tag cannot

    async def send(self, engine: Engine, target: str, params: tuple[str, str, str | None],
                   op: Operation | None) -> tuple[dict[str, Any], list[str]] | None:
        async with remote.pull(engine, *params) as stream:
            await _followed(stream, op)
        if engine.config.dry_run:
            return None
        said = [line for line in op.transcript.lines if line.startswith(("Digest:", "Status:"))] if op else []
        return await engine.inspect(self.subject(target, params)), said

    def describe(self, target: str, params: tuple[str, str, str | None]) -> str:
        return f"pull {self.subject(target, params)}" + (f" for {params[2]}" if params[2] else "")

    def report(self, target: str, params: tuple[str, str, str | None],
               answer: tuple[dict[str, Any], list[str]]) -> str:
        image, said = answer
        return "\n".join([f"pulled {self.subject(target, params)} ({image.get('Id')})", *said])


class Push(Command):
    usage = "write an empty line to push this tag to its registry (with the docker CLI's credentials)"
    kind = "push"

    def parse(self, text: str) -> None:
        if text:
            raise BadCommand(f"push takes no words; {self.usage}")

    async def send(self, engine: Engine, target: str, params: None, op: Operation | None) -> list[Any] | None:
        ref = references.parse(target)
        if ref is None or ref.tag is None or ref.digest is not None:
            raise BadCommand(f"{target} is no tagged reference: the engine pushes tags; push from a tag's directory")
        async with remote.push(engine, ref.name, ref.tag) as stream:
            await _followed(stream, op)
        return op.transcript.aux if op else []

    def describe(self, target: str, params: None) -> str:
        return f"push {target}"

    def report(self, target: str, params: None, answer: list[Any]) -> str:
        pushed = [a for a in answer if isinstance(a, dict) and a.get("Digest")]
        return "\n".join(f"pushed {target}: digest {a['Digest']} size {a.get('Size')}" for a in pushed) or \
            f"pushed {target}"


CommitParams = tuple[str, str, str, list[tuple[str, str]]]
_CONTAINER = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_COMMIT_WORDS = {"comment": "comment", "author": "author", "pause": "pause", "change": "changes"}


class Commit(Command):
    usage = ("write 'CONTAINER [REPOSITORY[:TAG]] [comment=…] [author=…] [pause=false] [change=INSTRUCTION]…' "
             "(shell quoting; a value runs to the next word=)")

    def parse(self, text: str) -> CommitParams:
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise BadCommand(f"{exc}; {self.usage}") from exc
        positional: list[str] = []
        options: list[tuple[str, str]] = []
        for word in words:
            key, eq, value = word.partition("=")
            if eq and key in _COMMIT_WORDS:
                options.append((_COMMIT_WORDS[key], value))
            elif options and options[-1][0] != "pause":  # "comment=before upgrade": the value goes on
                options[-1] = (options[-1][0], f"{options[-1][1]} {word}")
            elif not options and len(positional) < 2:
                positional.append(word)
            else:
                raise BadCommand(f"unexpected word {word!r}; {self.usage}")
        if not positional or not _CONTAINER.fullmatch(positional[0]):
            raise BadCommand(f"name a container first; {self.usage}")
        if any(key == "pause" and value not in ("true", "false") for key, value in options):
            raise BadCommand("pause= takes true or false")
        try:
            repo, tag = references.parse_tag_target(positional[1]) if len(positional) > 1 else ("", "")
        except ValueError as exc:
            raise BadCommand(str(exc)) from exc
        return positional[0], repo, tag, options

    async def send(self, engine: Engine, target: str, params: CommitParams,
                   op: Operation | None) -> dict[str, Any] | None:
        return await remote.commit(engine, *params)

    def describe(self, target: str, params: CommitParams) -> str:
        container, repo, tag, _ = params
        return f"commit container {container}" + (f" as {repo}:{tag}" if repo else "")

    def report(self, target: str, params: CommitParams, answer: dict[str, Any] | None) -> str:
        made = (answer or {}).get("Id")
        return f"{self.describe(target, params).replace('commit', 'committed', 1)}: {made}"


PruneParams = tuple[bool, int | None, dict[str, list[str]]]


class BuildPrune(Command):
    usage = ("write '' (unused cache), 'all', 'keep-storage=SIZE' (2GB, 512MB, bytes), 'until=24h' "
             "or another of the engine's filters as key=value (space-separated)")

    def parse(self, text: str) -> PruneParams:
        every, keep, filters = False, None, dict[str, list[str]]()
        for word in text.split():
            key, eq, value = word.partition("=")
            if word == "all":
                every = True
            elif key == "keep-storage" and eq:
                try:
                    keep = size(value)
                except ValueError as exc:
                    raise BadCommand(f"keep-storage: {exc}") from exc
            elif eq and key and value:
                filters.setdefault(key, []).append(value)
            else:
                raise BadCommand(f"unknown word {word!r}; {self.usage}")
        return every, keep, filters

    async def send(self, engine: Engine, target: str, params: PruneParams,
                   op: Operation | None) -> dict[str, Any] | None:
        return await remote.build_prune(engine, *params)

    def describe(self, target: str, params: PruneParams) -> str:
        every, keep, filters = params
        words = ["all"] * every + ([f"keep-storage={keep}"] if keep is not None else []) + \
            [f"{key}={value}" for key, values in filters.items() for value in values]
        return "prune the build cache" + (f" ({' '.join(words)})" if words else "")

    def report(self, target: str, params: PruneParams, answer: dict[str, Any] | None) -> str:
        deleted = (answer or {}).get("CachesDeleted") or []
        reclaimed = int((answer or {}).get("SpaceReclaimed") or 0)
        return "\n".join([*(f"deleted {cache}" for cache in deleted),
                          f"{len(deleted)} cache records deleted, {_reclaimed(reclaimed)}"])


COMMANDS: dict[str, Command] = {"tag": Tag(), "delete": Delete(), "prune": Prune(), "pull": Pull(), "push": Push(),
                                "commit": Commit(), "build-prune": BuildPrune()}
