"""Where an image's layers are in an engine's save (`GET /images/{name}/get`), whatever its layout.

- Docker ≤ 24: `<v1 id>/layer.tar` per layer, `<image id>.json`, `manifest.json`.
- Docker ≥ 25: an OCI layout (`blobs/sha256/<digest>`, `index.json`) whose
  `manifest.json` still lists the layers, in order (the OCI manifest of 25.0.0
  did not always: moby#47065), so `manifest.json` is what is read here.
- podman: `<diff id>.tar` per layer, the legacy `<id>/layer.tar` being symbolic
  links to those.
- the containerd image store: the same OCI layout with gzip or zstd blobs.

A layer's bytes are found by the member `manifest.json` names (links followed),
and its compression by its first bytes.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

from .members import REGULAR, SYMLINK, BadArchive, Buffer, Member, members

GZIP = b"\x1f\x8b"
ZSTD = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class LayerRef:
    diff_id: str  # sha256:… of its uncompressed tar, as RootFS.Layers says
    member: str
    offset: int  # of the member's data in the save
    size: int
    compression: str  # "", "gzip" or "zstd"
    created_by: str


@dataclass(frozen=True)
class Save:
    config: dict[str, Any]
    layers: list[LayerRef]


def read_save(buf: Buffer) -> Save:
    """The layers of the one image a save holds, bottom first."""
    by_name: dict[str, Member] = {}
    for m in members(buf):
        by_name[posixpath.normpath(m.path.decode("utf-8", "replace")).lstrip("/")] = m
    manifest = _json(buf, _regular(by_name, "manifest.json"), "manifest.json")
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
        raise BadArchive("manifest.json does not describe exactly one image")
    config = _json(buf, _regular(by_name, str(manifest[0].get("Config"))), "the image's config")
    names = manifest[0].get("Layers") or []
    if not isinstance(config, dict):
        raise BadArchive("the image's config is not a JSON object")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(names):
        raise BadArchive(f"manifest.json lists {len(names)} layers, the image's config {len(diff_ids)}")
    history = [h.get("created_by", "") for h in config.get("history") or [] if not h.get("empty_layer")]
    layers = []
    for i, (name, diff_id) in enumerate(zip(names, diff_ids, strict=True)):
        m = _regular(by_name, str(name))
        layers.append(LayerRef(diff_id, str(name), m.offset, m.size, compression(bytes(buf[m.offset : m.offset + 4])),
                               history[i] if i < len(history) else ""))
    return Save(config, layers)


def compression(head: bytes) -> str:
    """What a layer's first bytes say it is compressed with: "gzip", "zstd", or "" (a tar)."""
    return "gzip" if head.startswith(GZIP) else "zstd" if head.startswith(ZSTD) else ""


def _regular(by_name: dict[str, Member], name: str) -> Member:
    """The member of that name, symbolic links (podman's) followed inside the save."""
    for _ in range(8):
        m = by_name.get(posixpath.normpath(name).lstrip("/"))
        if m is None:
            raise BadArchive(f"the save has no member {name!r}")
        if m.kind == REGULAR:
            return m
        if m.kind != SYMLINK:
            raise BadArchive(f"the save's member {name!r} is not a file")
        name = posixpath.join(posixpath.dirname(name), m.link.decode("utf-8", "replace"))
    raise BadArchive(f"the save's member {name!r} is a loop of links")


def _json(buf: Buffer, m: Member, what: str) -> Any:
    try:
        return json.loads(bytes(buf[m.offset : m.offset + m.size]))
    except ValueError as exc:
        raise BadArchive(f"{what} is not JSON: {exc}") from None
