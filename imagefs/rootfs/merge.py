"""Layers applied in order with the OCI whiteout rules: the image's merged tree, and what each layer changed.

The model of the rules, on a tree of objects (about 1.3 KB a path): the index
is built row by row (`rootmerge`, `views`), and the tests hold those to this.

The rules (OCI image-spec layer.md, as containerd and containers/storage apply
them, checked against podman's own mounts):
- a layer's whiteouts (`.wh.<name>`, and `.wh..wh..opq` for all of a directory's
  children) hide what the layers below hold, never the layer's own entries: so
  they are applied before the layer's other members, whatever their order;
- a directory over a directory takes the new attributes and keeps the children;
  anything else replaces what was there, subtree and all, no whiteout needed;
- a parent reached through a symbolic link is the link's target, resolved inside
  the root; a missing parent is made, 0755 and root's;
- a hardlink shares the inode of its target as the tree holds it then, so a
  later change of the target's path leaves the link with the old bytes;
- the last member of a path in a layer wins; names that climb out (`..`) and
  names no layer can hold (`.wh.*`) never appear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from .members import DIRECTORY, HARDLINK, REGULAR, SYMLINK, Member, components

WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"
MAX_HOPS = 40  # symbolic links followed for one path, as Linux's MAXSYMLINKS

Path = tuple[bytes, ...]
H = TypeVar("H")  # a directory, as a tree holds it


@dataclass(slots=True, eq=False)
class Inode:
    """A file's content and attributes; the paths of one hardlink set share one."""

    kind: int
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int = 0
    layer: int = -1  # whose data `offset` is in (-1: none)
    offset: int = 0
    link: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    xattrs: dict[bytes, bytes] | None = None

    @classmethod
    def of(cls, m: Member, layer: int) -> Inode:
        data = m.kind == REGULAR
        return cls(m.kind, m.mode, m.uid, m.gid, m.mtime, m.size, layer if data else -1, m.offset if data else 0,
                   m.link if m.kind == SYMLINK else b"", m.rdev, m.xattrs)


def implicit_dir() -> Inode:
    return Inode(DIRECTORY, 0o755, 0, 0, 0)


@dataclass(slots=True, eq=False)
class Entry:
    inode: Inode
    children: dict[bytes, Entry] | None = None  # a directory's, by name
    layer: int = -1  # the layer that wrote this path last

    def walk(self, path: Path = ()) -> Iterable[tuple[Path, Entry]]:
        yield path, self
        for name, child in (self.children or {}).items():
            yield from child.walk((*path, name))


def new_entry(inode: Inode, layer: int) -> Entry:
    return Entry(inode, {} if inode.kind == DIRECTORY else None, layer)


@dataclass
class Layer:
    """What one layer did to the tree below it."""

    changes: dict[Path, str] = field(default_factory=dict)  # path -> A, C or D (docker diff's letters)
    removed: dict[Path, Entry] = field(default_factory=dict)  # what it removed or replaced, as it was
    own: Entry = field(default_factory=lambda: new_entry(implicit_dir(), -1))  # its own members as a tree
    wasted: int = 0  # bytes of this layer's files that later layers removed or replaced


class Merge:
    def __init__(self, views: bool = False) -> None:
        """`views`: also each layer's own files as a tree (`Layer.own`)."""
        self.views = views
        self.root = new_entry(implicit_dir(), -1)
        self.layers: list[Layer] = []
        self._parents: dict[Path, tuple[Entry, Path]] = {}  # resolved parents, while nothing moves

    def apply(self, members: Callable[[], Iterable[Member]]) -> None:
        """The next layer, bottom first: `members()` walks it, twice (its whiteouts first, then the rest,
        rather than holding a million members meanwhile)."""
        n = len(self.layers)
        layer = Layer()
        self.layers.append(layer)
        self._parents.clear()
        for pass_ in ("whiteouts", "entries"):
            for m in members():
                path = components(m.path)
                if path is None or (path and path[-1].startswith(WHITEOUT)) != (pass_ == "whiteouts"):
                    continue
                if pass_ == "whiteouts":
                    self._whiteout(path, layer)
                else:
                    self._add(path, m, n, layer)

    # --- whiteouts ----------------------------------------------------------------------

    def _whiteout(self, path: Path, layer: Layer) -> None:
        found = self._parent(path[:-1], create=False)
        if found is None:
            return  # a whiteout of something no lower layer has
        parent, where = found
        assert parent.children is not None
        names = list(parent.children) if path[-1] == OPAQUE else [path[-1][len(WHITEOUT) :]]
        for name in names:
            if name in parent.children:
                self._remove(parent, name, (*where, name), layer)
                layer.changes[(*where, name)] = "D"

    def _remove(self, parent: Entry, name: bytes, path: Path, layer: Layer, own: bool = False) -> None:
        """`own`: an earlier member of the same path in this layer, which nobody below ever saw."""
        assert parent.children is not None
        old = parent.children.pop(name)
        if not own:
            layer.removed.setdefault(path, old)
        for _, gone in old.walk():
            if gone.inode.layer >= 0 and gone.inode.kind == REGULAR:
                self.layers[gone.inode.layer].wasted += gone.inode.size
        if old.children is not None or old.inode.kind == SYMLINK:
            self._parents.clear()  # a cached parent may be under it, or reached through it

    # --- additions ----------------------------------------------------------------------

    def _add(self, path: Path, m: Member, n: int, layer: Layer) -> None:
        inode = self._inode(m, n, layer)
        if inode is None:
            return
        if self.views:
            _own(layer.own, path, inode)
        if not path:  # the root itself: only its attributes
            if inode.kind == DIRECTORY:
                self.root.inode = inode
            return
        found = self._parent(path[:-1], create=True)
        if found is None:
            return  # its parent is a file, or a loop of links: no engine could unpack it
        parent, where = found
        assert parent.children is not None
        name, resolved = path[-1], (*where, path[-1])
        old = parent.children.get(name)
        if layer.changes.get(resolved) == "D" or (old is not None and old.layer != n):
            layer.changes[resolved] = "C"  # also what a whiteout of this layer removed, then re-added
        else:
            layer.changes.setdefault(resolved, "A")
        if old is not None and old.inode.kind == DIRECTORY and inode.kind == DIRECTORY:
            old.inode, old.layer = inode, n
            return
        if old is not None:
            self._remove(parent, name, resolved, layer, own=old.layer == n)
        parent.children[name] = new_entry(inode, n)
        if inode.kind == SYMLINK:
            self._parents.clear()

    def _inode(self, m: Member, n: int, layer: Layer) -> Inode | None:
        if m.kind != HARDLINK:
            return Inode.of(m, n)
        target = components(m.link)
        if not target:
            return None
        found = self._parent(target[:-1], create=False)
        entry = found[0].children.get(target[-1]) if found is not None and found[0].children is not None else None
        if entry is None:  # whited out by this layer, after the link in its tar: the link holds the old file
            entry = _below(layer.removed, target)
        if entry is None or entry.inode.kind == DIRECTORY:
            return None  # a link to nothing, or to a directory: no engine would unpack it
        return entry.inode

    # --- paths --------------------------------------------------------------------------

    def _parent(self, path: Path, create: bool) -> tuple[Entry, Path] | None:
        """The directory at `path` (links followed inside the root) and its real path."""
        cached = self._parents.get(path)
        if cached is not None:
            return cached
        found = resolve(self.root, path, _step(create))
        if found is not None:
            self._parents[path] = found
        return found


def resolve(root: H, path: Path, step: Callable[[H, bytes], H | bytes | None]) -> tuple[H, Path] | None:
    """The directory at `path` below `root`, links followed inside the root, and its real path. `step(here,
    name)` is the directory `name` in `here` (made, if it may be), a link's target, or None (no directory)."""
    pending = list(reversed(path))
    stack: list[tuple[bytes, H]] = [(b"", root)]
    hops = 0
    while pending:
        name = pending.pop()
        if name in (b"", b"."):
            continue
        if name == b"..":
            if len(stack) > 1:
                stack.pop()
            continue
        child = step(stack[-1][1], name)
        if isinstance(child, bytes):
            hops += 1
            if hops > MAX_HOPS:
                return None
            if child.startswith(b"/"):
                stack = stack[:1]
            pending.extend(reversed(child.split(b"/")))
            continue
        if child is None:
            return None
        stack.append((name, child))
    return stack[-1][1], tuple(name for name, _ in stack[1:])


def _step(create: bool) -> Callable[[Entry, bytes], Entry | bytes | None]:
    def step(here: Entry, name: bytes) -> Entry | bytes | None:
        assert here.children is not None
        child = here.children.get(name)
        if child is None:
            if create:
                child = here.children[name] = new_entry(implicit_dir(), -1)
            return child
        if child.inode.kind == SYMLINK:
            return child.inode.link
        return child if child.children is not None else None

    return step


def _own(root: Entry, path: Path, inode: Inode) -> None:
    """A member in the tree of its layer's own files (no links followed: the paths as the layer holds them)."""
    if not path:
        root.inode = inode
        return
    here = root
    for name in path[:-1]:
        assert here.children is not None
        child = here.children.get(name)
        if child is None or child.children is None:
            child = here.children[name] = new_entry(implicit_dir(), -1)
        here = child
    assert here.children is not None
    old = here.children.get(path[-1])
    if old is not None and old.children is not None and inode.kind == DIRECTORY:
        old.inode = inode
    else:
        here.children[path[-1]] = new_entry(inode, -1)


def _below(removed: dict[Path, Entry], path: Path) -> Entry | None:
    """The entry at `path` in what a layer removed (a removed directory holds its subtree)."""
    for i in range(len(path), 0, -1):
        entry = removed.get(path[:i])
        for name in path[i:]:
            entry = (entry.children or {}).get(name) if entry is not None else None
        if entry is not None:
            return entry
    return None
