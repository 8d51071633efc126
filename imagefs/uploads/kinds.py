"""The three uploads: what a path under load/, import/ or build/ asks the engine, and what its answer says.

A name holds everything the request needs before its body starts: the reference the
result is tagged with, then, after the first `,` (no reference has one), the options,
percent-decoded (`build/myapp:2,file=ci%2FDockerfile,arg.V=3,nocache`). Pure: a bad
name or option is `BadCommand` before anything is sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from .. import references
from ..engine.messages import Transcript
from ..errors import BadCommand
from ..references import TreePath

LOAD, IMPORT, BUILD = "load", "import", "build"
TAR = {"Content-Type": "application/x-tar"}  # else dockerd parses the body as a form (400)


@dataclass(frozen=True)
class Request:
    kind: str
    target: str  # what the outcome is kept under: the reference, or load/'s file name
    path: str
    params: tuple[tuple[str, str], ...]
    headers: dict[str, str] = field(default_factory=lambda: dict(TAR))
    # Send every registry credential (X-Registry-Config): a build's FROM may name a private image.
    credentials: bool = False

    def line(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.params)
        return f"POST {self.path}" + (f"?{query}" if query else "")


def split_name(name: str) -> tuple[str, list[tuple[str, str | None]]]:
    """A leaf name's reference part and its options, each `key=value` (decoded) or a bare word."""
    leaf, _, rest = name.partition(",")
    options: list[tuple[str, str | None]] = []
    for word in rest.split(",") if rest else ():
        key, eq, value = word.partition("=")
        if not key:
            raise BadCommand(f"an empty option in {name!r}")
        options.append((unquote(key), unquote(value) if eq else None))
    return leaf, options


def target_of(kind: str, prefix: TreePath, name: str) -> str:
    """The target a name under a kind's directory stands for (load: the name; else `repo:tag`),
    as its request keeps its record: `import/base,message=x` is `base:latest`."""
    return name if kind == LOAD else _reference(prefix, name)[0]


def _reference(prefix: TreePath, name: str) -> tuple[str, list[tuple[str, str | None]]]:
    """The `repo:tag` a leaf under import/ or build/ names, and its options; BadCommand if none."""
    leaf, options = split_name(name)
    ref = "/".join((*prefix, leaf))
    try:
        repo, tag = references.parse_tag_target(ref)
    except ValueError as exc:
        raise BadCommand(f"{ref!r} is not an image reference: {exc}") from exc
    return f"{repo}:{tag}", options


def is_namespace(prefix: TreePath, name: str) -> bool:
    """Whether a name under import/ or build/ is a directory: a reference's namespace, never a leaf.

    Anything that can be a namespace is one (so `import/myorg/base:1` needs no mkdir); a
    name with a tag, digest or options is a leaf. `localhost:5000` and `127.0.0.1:5000`
    are registries, as the engine tells them (a `.`, or localhost); `base:1` is a tag.
    """
    if "," in name or "@" in name:
        return False
    if ":" not in name:
        return references.is_namespace_path((*prefix, name))
    host = name.rsplit(":", 1)[0]
    return not prefix and ("." in host or host == "localhost") and references.is_namespace_path((name,))


def request(kind: str, prefix: TreePath, name: str) -> Request:
    if kind == LOAD:
        return Request(LOAD, name, "/images/load", (("quiet", "0"),))
    ref, options = _reference(prefix, name)
    if kind == IMPORT:
        # The tag inside `repo`, which the API allows: podman's compat API ignores a separate `tag`.
        params = [("fromSrc", "-"), ("repo", ref), *_options(IMPORT_OPTIONS, options)]
        return Request(IMPORT, ref, "/images/create", tuple(params))
    params = [("t", ref), ("version", "1"), ("rm", "1"), *_options(BUILD_OPTIONS, options)]
    return Request(BUILD, ref, "/build", tuple(_merge_maps(params)), credentials=True)


Option = Callable[[str, str | None], tuple[str, str]]


def _value(param: str) -> Option:
    def take(key: str, value: str | None) -> tuple[str, str]:
        if not value:
            raise BadCommand(f"option {key!r} needs a value ({key}=…)")
        return param, value

    return take


def _switch(param: str) -> Option:
    def take(key: str, value: str | None) -> tuple[str, str]:
        if value not in (None, "1", "true"):
            raise BadCommand(f"option {key!r} takes no value")
        return param, "1"

    return take


def _entry(param: str) -> Option:
    """`arg.K=V`, `label.K=V`: one entry of a JSON map (joined by _merge_maps)."""

    def take(key: str, value: str | None) -> tuple[str, str]:
        name = key.split(".", 1)[1]
        if not name:
            raise BadCommand(f"option {key!r} needs a name after the dot")
        return param, json.dumps({name: value or ""})

    return take


IMPORT_OPTIONS: dict[str, Option] = {"message": _value("message"), "change": _value("changes"),
                                     "platform": _value("platform")}
BUILD_OPTIONS: dict[str, Option] = {
    "file": _value("dockerfile"), "target": _value("target"), "platform": _value("platform"),
    "network": _value("networkmode"), "nocache": _switch("nocache"), "pull": _switch("pull"),
    "forcerm": _switch("forcerm"), "arg.": _entry("buildargs"), "label.": _entry("labels"),
}


def _options(table: dict[str, Option], options: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    params = []
    for key, value in options:
        take = table.get(key.split(".", 1)[0] + "." if "." in key else key)
        if take is None:
            known = ", ".join(k + ("K=V" if k.endswith(".") else "") for k in table)
            raise BadCommand(f"unknown option {key!r}; the options are {known}")
        params.append(take(key, value))
    return params


def _merge_maps(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Entries of one JSON map (buildargs, labels) as the one parameter the engine reads."""
    maps: dict[str, dict[str, Any]] = {}
    merged = []
    for key, value in params:
        if key in ("buildargs", "labels"):
            maps.setdefault(key, {}).update(json.loads(value))
        else:
            merged.append((key, value))
    return merged + [(key, json.dumps(entries, sort_keys=True)) for key, entries in maps.items()]


def result(request: Request, transcript: Transcript) -> str:
    """The engine's answer in one line: what was made."""
    if request.kind == IMPORT:
        image = next((line for line in transcript.lines if line.startswith("sha256:")), "?")
        return f"imported {request.target} as {image}"
    if request.kind == BUILD:
        built = next((aux["ID"] for aux in transcript.aux if isinstance(aux, dict) and "ID" in aux), "?")
        return f"built {request.target} as {built}"
    loaded = [line for line in transcript.lines if line.startswith("Loaded image")]
    return "; ".join(loaded) or "loaded (the engine named no image)"
