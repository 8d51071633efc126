"""Image references as paths: the distribution reference grammar and the path rules of SPEC §1.

Pure functions, no I/O. A path is a tuple of components below the mount root.

- An image directory's path joined with "/" is its reference: it has a tag
  (`app:1.0`) or a digest (`app@sha256:…`) in its last component.
- A namespace directory is a proper "/"-prefix of a reference's name: its
  components never hold "@", and ":" only as the port of a registry in the
  first component. `localhost:5000` is therefore both a possible image
  (repository `localhost`, tag `5000`) and a possible registry namespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# github.com/distribution/reference, regexp.go
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?"
TAG = r"[\w][\w.-]{0,127}"
DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
NAME = rf"(?:{DOMAIN}/)?{PATH_COMPONENT}(?:/{PATH_COMPONENT})*"
# re.ASCII: the grammar's \w is Go's [0-9A-Za-z_], not every Unicode letter.
REFERENCE = re.compile(rf"(?P<name>{NAME})(?::(?P<tag>{TAG}))?(?:@(?P<digest>{DIGEST}))?", re.ASCII)
NAME_TOTAL_LENGTH_MAX = 255

_PATH_COMPONENT_RE = re.compile(PATH_COMPONENT)
_DOMAIN_RE = re.compile(DOMAIN)
_IMAGE_ID_RE = re.compile(r"[0-9a-f]{64}")

TreePath = tuple[str, ...]


@dataclass(frozen=True)
class Reference:
    name: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse(text: str) -> Reference | None:
    """A reference as the grammar reads it, or None when it is not one."""
    m = REFERENCE.fullmatch(text)
    if m is None or len(m["name"]) > NAME_TOTAL_LENGTH_MAX:
        return None
    return Reference(m["name"], m["tag"], m["digest"])


def parse_tag_target(text: str) -> tuple[str, str]:
    """`repo[:tag]` for ImageTag: (repo, tag), the tag defaulting to latest; ValueError if the grammar or
    the engine would refuse it (the engine answers those with 500, as if it had failed)."""
    m = REFERENCE.fullmatch(text)
    if m is None or m["digest"] is not None:
        raise ValueError(f"invalid reference format: {text!r} is not repository[:tag]")
    refused = engine_refusal(m["name"])
    if refused:
        raise ValueError(refused)
    return m["name"], m["tag"] or "latest"


# dockerd 20.10 reads a new repository name with ParseNormalizedNamed of the docker/distribution reference
# it vendors (normalize.go), and answers what that refuses with 500. The grammar alone does not tell: the
# first component is a registry only with a "." or a ":" or as "localhost", and the name is measured once
# "docker.io/library/" is added. (github.com/distribution/reference, in newer engines, also takes an
# uppercase first component as a registry, and IPv6 hosts: those are refused here all the same.)
DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"


def normalized_name(name: str) -> str:
    """A repository name as the engine spells it in full: `alpine` is `docker.io/library/alpine` (splitDockerDomain)."""
    first, slash, rest = name.partition("/")
    if slash and (any(c in first for c in ".:") or first == "localhost"):
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, name
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return f"{domain}/{remainder}"


def engine_refusal(name: str) -> str | None:
    """Why dockerd 20.10 refuses a grammatical repository name as a new tag, in its words; None if it takes it."""
    if _IMAGE_ID_RE.fullmatch(name):
        return f"invalid reference format: repository name ({name}) cannot be 64 hex digits, the form of an image ID"
    full = normalized_name(name)
    remote = full.split("/", 1)[1]
    if remote != remote.lower():  # an uppercase first component that is no registry host
        return f"invalid reference format: repository name ({name}) must be lowercase"
    if name.startswith("["):  # its grammar has no IPv6 hosts yet
        return f"invalid reference format: the engine takes no IPv6 registry host ({name})"
    if len(full) > NAME_TOTAL_LENGTH_MAX:
        return (f"invalid reference format: repository name must not be more than {NAME_TOTAL_LENGTH_MAX} "
                f"characters ({len(full)} as the engine spells it, {full[:30]}…)")
    return None


def to_path(reference: str) -> TreePath | None:
    """Where a reference the engine reports lives in the tree; None if it has no place there."""
    ref = parse(reference)
    if ref is None or (ref.tag is None and ref.digest is None):
        return None
    return tuple(reference.split("/"))


def is_image_path(path: TreePath) -> bool:
    """Could this path name an image directory (a tagged or digest reference)?"""
    return bool(path) and to_path("/".join(path)) == path


def is_namespace_path(path: TreePath) -> bool:
    """Could this path be a proper prefix of some reference's name?"""
    if not path:
        return True
    first, rest = path[0], path[1:]
    if not (_PATH_COMPONENT_RE.fullmatch(first) or _DOMAIN_RE.fullmatch(first)):
        return False
    return all(_PATH_COMPONENT_RE.fullmatch(c) for c in rest) and len("/".join(path)) < NAME_TOTAL_LENGTH_MAX


def is_image_id(text: str) -> bool:
    return _IMAGE_ID_RE.fullmatch(text) is not None


def short_id(image_id: str) -> str:
    """An engine ID (`sha256:…`, or podman's bare hex) as the 64-hex name used in paths."""
    return image_id.removeprefix("sha256:")
