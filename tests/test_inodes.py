"""The adapter's inode table: numbers from content keys, the kernel's lookup counts and names."""

from __future__ import annotations

import errno
from dataclasses import dataclass

import pyfuse3
import pytest

from imagefs.fuse.inodes import Inodes
from imagefs.nodes.base import Node, Stat


@dataclass
class Leaf(Node):
    path: tuple[str, ...]
    content: str = ""

    @property
    def key(self) -> object:
        return (self.path, self.content)

    async def stat(self) -> Stat:
        return Stat(0o100444, len(self.content), 0)


def test_numbers_come_from_content_and_are_stable() -> None:
    a, b = Inodes(Leaf(())), Inodes(Leaf(()))
    nodes = [Leaf(("myorg",)), Leaf(("myorg", "app:1.0")), Leaf(("myorg", "app:1.0", "inspect"), "{}")]
    numbers = [a.add(n) for n in nodes]
    assert numbers == [b.add(n) for n in nodes]  # the same in another mount
    assert len(set(numbers)) == len(numbers) and pyfuse3.ROOT_INODE not in numbers
    assert a.add(Leaf(("myorg", "app:1.0", "inspect"), "{}")) == numbers[2]  # same content, same inode
    moved = a.add(Leaf(("myorg", "app:1.0", "inspect"), '{"other": 1}'))
    assert moved not in numbers  # same path, other content: another inode
    assert a.node(numbers[2]).key == (("myorg", "app:1.0", "inspect"), "{}")  # the old one still answers


def test_lookup_counts_names_and_forget() -> None:
    inodes = Inodes(Leaf(()))
    ino = inodes.add(Leaf(("hello:latest",)))
    inodes.remember(ino, pyfuse3.ROOT_INODE, "hello:latest")
    inodes.remember(ino, pyfuse3.ROOT_INODE, "hello:latest")
    assert inodes.names(ino) == {(pyfuse3.ROOT_INODE, "hello:latest")}
    assert not inodes.forget(ino, 1)
    assert inodes.node(ino).path == ("hello:latest",)
    assert inodes.forget(ino, 1)
    with pytest.raises(pyfuse3.FUSEError) as info:
        inodes.node(ino)
    assert info.value.errno == errno.ESTALE
    assert inodes.names(ino) == set()
    assert inodes.forget(12345, 1)  # an inode never handed out: nothing else is touched
    assert not inodes.forget(pyfuse3.ROOT_INODE, 5)
    assert inodes.node(pyfuse3.ROOT_INODE).path == ()


def test_an_inode_holds_its_node_until_forgotten_or_given_an_equal_one() -> None:
    """What a kept readdirplus reply relies on to skip `add`: the very node still stands for its number."""
    inodes = Inodes(Leaf(()))
    listed = Leaf(("busybox:latest", "rootfs", "bin"))
    ino = inodes.add(listed)
    inodes.remember(ino, pyfuse3.ROOT_INODE, "bin")
    assert inodes.holds(ino, listed)
    looked_up = Leaf(("busybox:latest", "rootfs", "bin"))  # equal content, reached again
    assert inodes.add(looked_up) == ino
    assert not inodes.holds(ino, listed) and inodes.holds(ino, looked_up)
    assert inodes.forget(ino, 1)
    assert not inodes.holds(ino, looked_up)
