"""Inode numbers for nodes: one per content key, with the kernel's lookup counts and the names it holds.

A number is a hash of the node's key, so it is stable across remounts while the
content is the same; the node is kept until the kernel forgets the inode, so an
inode always answers for the content it was given for.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Hashable, Iterator

import pyfuse3

from ..nodes.base import Node

Dentry = tuple[int, str]  # (parent inode, name)


class Inodes:
    def __init__(self, root: Node) -> None:
        self._node: dict[int, Node] = {pyfuse3.ROOT_INODE: root}
        self._ino: dict[Hashable, int] = {root.key: pyfuse3.ROOT_INODE}
        self._lookups: dict[int, int] = {}
        self._names: dict[int, set[Dentry]] = {}  # the names the kernel may hold for an inode

    def add(self, node: Node) -> int:
        """The inode of a node's content (a known content keeps its number and takes the newer node)."""
        key = node.key
        ino = self._ino.get(key)
        if ino is None:
            digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
            ino = max(int.from_bytes(digest) >> 1, pyfuse3.ROOT_INODE + 1)
            while ino in self._node:  # a collision: probe on, stable for this mount
                ino += 1
            self._ino[key] = ino
        self._node[ino] = node
        return ino

    def holds(self, ino: int, node: Node) -> bool:
        """Is `ino` this very node's (as `add` made it, and nothing added an equal node since)?"""
        return self._node.get(ino) is node

    def node(self, ino: int) -> Node:
        try:
            return self._node[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def known(self) -> Iterator[tuple[int, Node]]:
        return iter(list(self._node.items()))

    def names(self, ino: int) -> set[Dentry]:
        return self._names.get(ino, set())

    def remember(self, ino: int, parent: int, name: str) -> None:
        """The kernel got this inode for `name` in `parent` (a lookup, a readdirplus entry, a create)."""
        self._lookups[ino] = self._lookups.get(ino, 0) + 1
        self._names.setdefault(ino, set()).add((parent, name))

    def forget(self, ino: int, n: int) -> bool:
        """Count down the kernel's references; True when the inode and its node are gone."""
        left = self._lookups.get(ino, 0) - n
        if left > 0:
            self._lookups[ino] = left
            return False
        if ino == pyfuse3.ROOT_INODE:
            return False
        self._lookups.pop(ino, None)
        self._names.pop(ino, None)
        node = self._node.pop(ino, None)
        if node is not None and self._ino.get(node.key) == ino:
            del self._ino[node.key]
        return True
