"""The adapter's inode table: numbers from paths, the kernel's lookup counts."""

from __future__ import annotations

import errno

import pyfuse3
import pytest

from imagefs.fs import Inodes


def test_numbers_are_stable_and_distinct() -> None:
    a, b = Inodes(), Inodes()
    paths = [("myorg",), ("myorg", "app:1.0"), ("myorg", "app:1.0", "inspect"), (".imagefs", "ids")]
    numbers = [a.ino(p) for p in paths]
    assert numbers == [b.ino(p) for p in paths]  # the same in another mount
    assert len(set(numbers)) == len(numbers) and pyfuse3.ROOT_INODE not in numbers
    assert a.ino(()) == pyfuse3.ROOT_INODE and a.path(numbers[1]) == ("myorg", "app:1.0")


def test_lookup_counts_and_forget() -> None:
    inodes = Inodes()
    ino = inodes.ino(("hello:latest",))
    inodes.remember(ino)
    inodes.remember(ino)
    assert not inodes.forget(ino, 1)
    assert inodes.path(ino) == ("hello:latest",)
    assert inodes.forget(ino, 1)
    with pytest.raises(pyfuse3.FUSEError) as info:
        inodes.path(ino)
    assert info.value.errno == errno.ESTALE
    assert inodes.forget(12345, 1)  # an inode never handed out: nothing else is touched
    assert not inodes.forget(pyfuse3.ROOT_INODE, 5)
    assert inodes.path(pyfuse3.ROOT_INODE) == () and inodes.ino(()) == pyfuse3.ROOT_INODE
