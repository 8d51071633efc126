"""Tar bytes made in the test: layers, and whole saves in each engine's layout (legacy, OCI, podman)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass, field

KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
         "fifo": tarfile.FIFOTYPE, "char": tarfile.CHRTYPE}


@dataclass
class M:
    """One layer member: `data` is a file's bytes, or a link's target."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_000_000_000
    xattrs: dict[str, str] = field(default_factory=dict)


def layer(*members: M) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = KINDS[m.kind]
            info.mode, info.uid, info.gid, info.mtime = m.mode, m.uid, m.gid, m.mtime
            if m.kind in ("symlink", "hardlink"):
                info.linkname = m.data.decode()
            if m.kind == "char":
                info.devmajor, info.devminor = 1, 3
            if m.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in m.xattrs.items()}
            payload = m.data if m.kind == "file" else b""
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", link: str | None = None) -> None:
    info = tarfile.TarInfo(name)
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
    else:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def compressed(raw: bytes, how: str) -> bytes:
    """gzip, zstd, zstd as zstd:chunked writes it (one frame per part, skippable frames between), or gzip
    as eStargz writes it (gzip:members: one member per part, which Go's reader, like gunzip, reads on); or,
    what no engine takes, gzip with zeros after it (gzip+zeros)."""
    if how == "gzip:members":
        return compressed(raw[:1024], "gzip") + compressed(raw[1024:], "gzip")
    if how == "gzip+zeros":
        return compressed(raw, "gzip") + bytes(1024)
    if how == "zstd:chunked":
        skippable = (0x184D2A50).to_bytes(4, "little") + (6).to_bytes(4, "little") + b"chunks"
        return compressed(raw[:1024], "zstd") + skippable + compressed(raw[1024:], "zstd")
    if how == "zstd":  # the zstd command: Python has no zstd module before 3.14
        return subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
    return gzip.compress(raw, mtime=0)


def save(layers: list[bytes], layout: str = "legacy", created_by: list[str] | None = None,
         compress: bool | str = False) -> bytes:
    """A save of one image, tagged t:1, with these layers, in the layout of Docker 20.10 ("legacy"),
    Docker ≥ 25 ("oci") or podman ("podman"); `compress` is "gzip" (or True) or "zstd"."""
    diff_ids = ["sha256:" + hashlib.sha256(raw).hexdigest() for raw in layers]
    steps = created_by or [f"RUN step {i}" for i in range(len(layers))]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids},
                         "history": [{"created_by": s} for s in steps]}).encode()
    image_id = hashlib.sha256(config).hexdigest()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        names = []
        for raw, diff_id in zip(layers, diff_ids, strict=True):
            blob = compressed(raw, "gzip" if compress is True else compress) if compress else raw
            digest = hashlib.sha256(blob).hexdigest()
            if layout == "legacy":
                name = f"{digest}/layer.tar"
            elif layout == "oci":
                name = f"blobs/sha256/{digest}"
            else:
                name = f"{diff_id.removeprefix('sha256:')}.tar"
                _add(tar, f"{digest[:8]}legacy/layer.tar", link=f"../{name}")
            _add(tar, name, blob)
            names.append(name if layout != "podman" else f"{digest[:8]}legacy/layer.tar")
        config_name = f"blobs/sha256/{image_id}" if layout == "oci" else f"{image_id}.json"
        _add(tar, config_name, config)
        if layout == "oci":
            _add(tar, "index.json", b'{"schemaVersion":2,"manifests":[]}')
        manifest = [{"Config": config_name, "RepoTags": ["t:1"], "Layers": names}]
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return out.getvalue()


def oci_archive(layers: list[bytes], name: str, compress: str) -> bytes:
    """An OCI image layout as `docker load` takes it on the containerd image store: `index.json` naming
    one image `name`, its layers' blobs compressed (their media type says how)."""
    blobs = [compressed(raw, compress) for raw in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [_digest(raw) for raw in layers]},
                         "history": [{"created_by": f"layer {i}"} for i in range(len(layers))]}).encode()
    kind = "zstd" if compress.startswith("zstd") else "gzip"
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [_descriptor(f"application/vnd.oci.image.layer.v1.tar+{kind}", blob) for blob in blobs]}).encode()
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {**_descriptor("application/vnd.oci.image.manifest.v1+json", manifest),
         "annotations": {"io.containerd.image.name": name}}]}).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(tar, "index.json", index)
        for blob in (config, manifest, *blobs):
            _add(tar, "blobs/sha256/" + _digest(blob).removeprefix("sha256:"), blob)
    return out.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}
