"""Which engine answers, and everything imagefs does differently because of it: the one place.

imagefs speaks the Docker Engine API as dockerd 20.10 does. The other engines a docker user has
speak it with accents of their own, measured against dockerd 20.10.24, dockerd 26.1.5 (on graph
drivers, and on the containerd image store, Docker 29's default) and podman 4.3.1's service:

- **Saves.** dockerd 20.10 and podman write a docker-archive (configs as `<hex>.json`), dockerd
  25+ an OCI layout plus the same manifest.json (configs as `blobs/sha256/<hex>`). On graph
  drivers and podman an image's ID is its config's digest, which manifest.json names. On the
  containerd image store the ID is the digest of the image's manifest (or index): manifest.json
  names a config that is not the ID, and only index.json names the ID (`Flavor.saved`).
- **Events.** Actions that change no image, tag or digest need no new list: dockerd's `save`;
  podman's `save`, and `mount`/`unmount` (`podman image mount`) (`Flavor.unchanging`). Other
  names differ but need nothing, as any other action lists the images again: podman says
  `loadfromarchive` for `load`, sends `build` events, names no image in either (`id` null), and
  names images in the others by bare hex, without `sha256:` (only logged). Its `delete` follows
  every `untag`, also when the image stays.
- **References.** podman lists RepoTags fully qualified (`docker.io/library/x:1`, `localhost/x:1`)
  and stores a tag written through the API as `x:1` under `docker.io/library/x:1`. The tree
  shows references as the engine spells them (SPEC §1): nothing renames them, but the tag
  control file says where the new one is (`Flavor.spelled`).
- **Saves by ID.** The containerd image store refuses to save a bare 64-hex ID (`save_name`).
- **API versions.** dockerd 20.10 speaks 1.12–1.41, dockerd 26 1.24–1.45, podman's service
  1.24–1.41, Docker 29.0–29.2 refuses versions below 1.44: `Engine.negotiate` picks 1.41 where
  the range holds it, the nearest end otherwise, whatever the engine.
- **Aborted uploads.** dockerd (20.10 and 26, either store) creates nothing from an upload whose
  chunked body is cut before its terminating chunk, once the end-of-archive marker is held back
  (dockerd 26 imports a tar whose marker it has read). podman 4.3.1's service imports whatever an
  aborted body brought: a rootfs tar cut at a member boundary, its marker never sent, became an
  image of the members before the cut (`Flavor.keeps_partial_bodies`). Uploads to it are spooled
  locally and sent whole at the commit (imagefs.uploads.local); to dockerd they stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import references

# The save's members that tell which images it holds (tarcheck keeps them while it walks).
SAVE_INDEXES = frozenset({"manifest.json", "index.json"})
CONTAINERD_SNAPSHOTTER = "io.containerd.snapshotter.v1"  # /info DriverStatus driver-type


@dataclass(frozen=True)
class Flavor:
    name: str
    unchanging: frozenset[str]  # event actions after which the image list is the same
    ids_are_manifests: bool = False  # containerd image store: an ID is a manifest's digest
    qualifies: bool = False  # stores and lists a tag written `x:1` as `docker.io/library/x:1`
    keeps_partial_bodies: bool = False  # makes an image of an upload whose request was cut off

    def spelled(self, reference: str) -> str:
        """A reference just tagged, as this engine will list it (and the tree show it)."""
        return normalized(reference) if self.qualifies else reference

    def saved(self, members: Mapping[str, bytes]) -> dict[str, set[str]]:
        """The images a save holds, by 64-hex ID, with the references each is saved under
        (normalized: `docker.io/library/x:1`); ValueError when its indexes do not say."""
        if self.ids_are_manifests:
            return _index_images(members.get("index.json"))
        return _manifest_images(members.get("manifest.json"))


# (A push does change something: the image gains a repository digest.)
DOCKER = Flavor("docker", frozenset({"save"}))
DOCKER_CONTAINERD = Flavor("docker (containerd image store)", frozenset({"save"}), ids_are_manifests=True)
PODMAN = Flavor("podman", frozenset({"save", "mount", "unmount"}), qualifies=True, keeps_partial_bodies=True)


def identify(version: Mapping[str, Any], info: Mapping[str, Any]) -> Flavor:
    """The flavor of the engine whose /version and /info these are."""
    components = {str(c.get("Name")) for c in version.get("Components") or () if isinstance(c, dict)}
    if "Podman Engine" in components:
        return PODMAN
    driver_status = dict(tuple(pair) for pair in info.get("DriverStatus") or () if len(pair) == 2)
    if driver_status.get("driver-type") == CONTAINERD_SNAPSHOTTER:
        return DOCKER_CONTAINERD
    return DOCKER


def save_name(target: str) -> str:
    """The name to ask a save of: an image ID as `sha256:<hex>`, on every engine. The containerd
    image store reads the name as a reference and refuses a bare 64-hex one (500 "cannot specify
    64-byte hexadecimal strings"); inspect, history, tag and delete take either form everywhere."""
    return f"sha256:{target}" if references.is_image_id(target) else target


def normalized(reference: str) -> str:
    """A reference as the engine spells it in full (`hello:latest` is `docker.io/library/hello:latest`),
    so that a save's names and the tree's compare whichever way each engine writes them."""
    ref = references.parse(reference)
    if ref is None:
        return reference
    return str(references.Reference(references.normalized_name(ref.name), ref.tag, ref.digest))


def _manifest_images(manifest: bytes | None) -> dict[str, set[str]]:
    images: dict[str, set[str]] = {}
    for entry in _json_list(manifest, "manifest.json"):
        config = str(entry.get("Config", ""))
        image_id = _hex_id(config.rsplit("/", 1)[-1].removesuffix(".json"), config)
        images.setdefault(image_id, set()).update(normalized(t) for t in entry.get("RepoTags") or ())
    return images


def _index_images(index: bytes | None) -> dict[str, set[str]]:
    try:
        listed = json.loads(index or b"")["manifests"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError("no readable index.json") from exc
    images: dict[str, set[str]] = {}
    for entry in listed if isinstance(listed, list) else ():
        digest = str(entry.get("digest", "")) if isinstance(entry, dict) else ""
        image_id = _hex_id(digest.removeprefix("sha256:"), digest)
        name = (entry.get("annotations") or {}).get("io.containerd.image.name")
        images.setdefault(image_id, set()).update({normalized(name)} if name else ())
    return images


def _json_list(data: bytes | None, member: str) -> list[dict[str, Any]]:
    try:
        entries = json.loads(data or b"")
    except ValueError as exc:
        raise ValueError(f"no readable {member}") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"no readable {member}")
    return entries


def _hex_id(candidate: str, named: str) -> str:
    if not references.is_image_id(candidate):
        raise ValueError(f"the save names no image ID in {named[:80]!r}")
    return candidate
