"""The errno table of SPEC §4: every error class has one, and engine statuses map to the right class."""

from __future__ import annotations

import errno
import importlib
import pkgutil
import re

import pytest

import imagefs
from imagefs import errors
from imagefs.errors import (
    ERRNO,
    AccessDenied,
    BadCommand,
    BadParameter,
    Conflict,
    EngineError,
    EngineFailed,
    EngineTimeout,
    EngineUnreachable,
    ImagefsError,
    NoSuchImage,
    NotSupported,
    ReadOnly,
    engine_error,
    errno_for,
)

# Error classes may be defined anywhere in the package: import every module first
# (except __main__, which runs the command line).
for _module in pkgutil.iter_modules(imagefs.__path__):
    if _module.name != "__main__":
        importlib.import_module(f"imagefs.{_module.name}")


def all_subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *all_subclasses(sub)}
    return found


def package_errors() -> set[type[ImagefsError]]:
    return {c for c in all_subclasses(ImagefsError) if c.__module__.split(".")[0] == "imagefs"}


def test_discovery_is_recursive() -> None:
    found = package_errors()
    # Grandchildren (through EngineError) are found, not only direct subclasses.
    assert {BadParameter, AccessDenied, NoSuchImage, Conflict, NotSupported, EngineFailed} <= found
    assert {EngineError, EngineUnreachable, EngineTimeout, BadCommand, ReadOnly} <= found

    class Local(NotSupported):  # a great-grandchild defined outside the package
        pass

    assert Local in all_subclasses(ImagefsError)
    assert Local not in package_errors()


def test_every_error_class_has_an_errno() -> None:
    missing = sorted(c.__qualname__ for c in package_errors() if c not in ERRNO)
    assert missing == [], f"add these to errors.ERRNO: {missing}"


def test_errno_table_values_are_errnos() -> None:
    valid = set(errno.errorcode)
    assert all(isinstance(v, int) and v in valid for v in ERRNO.values())
    assert all(issubclass(k, ImagefsError) for k in ERRNO)


@pytest.mark.parametrize(
    ("status", "cls", "code"),
    [
        (400, BadParameter, errno.EINVAL),
        (401, AccessDenied, errno.EACCES),
        (403, AccessDenied, errno.EACCES),
        (404, NoSuchImage, errno.ENOENT),
        (409, Conflict, errno.EBUSY),
        (500, EngineFailed, errno.EIO),
        (501, NotSupported, errno.ENOTSUP),
        (502, EngineFailed, errno.EIO),
        (503, EngineFailed, errno.EIO),
        (418, EngineFailed, errno.EIO),
    ],
)
def test_engine_error_by_status(status: int, cls: type[EngineError], code: int) -> None:
    exc = engine_error(status, "the engine's words", "DELETE /images/x")
    assert type(exc) is cls
    assert exc.status == status
    assert exc.message == "the engine's words"
    assert exc.request == "DELETE /images/x"
    assert str(exc) == f"DELETE /images/x: {status} the engine's words"
    assert errno_for(exc) == code


def test_engine_error_without_request() -> None:
    exc = engine_error(404, "No such image: x:1")
    assert str(exc) == "404 No such image: x:1"
    assert exc.request == ""


def test_unreachable_is_eio_never_enoent() -> None:
    code = errno_for(EngineUnreachable("connection refused"))
    assert code == errno.EIO
    assert code != errno.ENOENT


def test_timeout_is_etimedout() -> None:
    assert errno_for(EngineTimeout("no answer in 30 s")) == errno.ETIMEDOUT


def test_imagefs_side_errors() -> None:
    assert errno_for(BadCommand("two lines")) == errno.EINVAL
    assert errno_for(ReadOnly("read-only mount")) == errno.EROFS


def test_errno_for_uses_the_most_specific_class() -> None:
    class Deeper(NoSuchImage):
        pass

    class Unlisted(ImagefsError):
        pass

    assert errno_for(Deeper(404, "gone")) == errno.ENOENT  # inherits NoSuchImage's entry
    assert errno_for(EngineError(599, "odd")) == errno.EIO
    assert errno_for(Unlisted("?")) == errno.EIO  # the fallback


def docstring_tree() -> dict[str, str | None]:
    """The hierarchy drawn in errors.py's docstring: each class name and the name of its parent."""
    doc = errors.__doc__ or ""
    drawing = re.search(r"\n\n((?: {4}.*\n)+)", doc)
    assert drawing, "errors.py's docstring draws no indented tree"
    parents: dict[str, str | None] = {}
    ancestors: list[str] = []  # the names on the path from the root to the line above
    for line in drawing.group(1).splitlines():
        # "    │   ├── Name    comment": each level of depth is four columns of "│   " or blanks.
        drawn = re.fullmatch(r" {4}((?:│   | {4})*)(?:[├└]── )?([A-Za-z]\w*)(?:\s.*)?", line)
        assert drawn, f"not a line of the tree: {line!r}"
        depth = len(drawn.group(1)) // 4 + (1 if "── " in line else 0)
        assert depth <= len(ancestors), f"a line deeper than the one above it: {line!r}"
        del ancestors[depth:]
        parents[drawn.group(2)] = ancestors[-1] if ancestors else None
        ancestors.append(drawn.group(2))
    return parents


def test_the_tree_parser_reads_depth_and_parents(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "__doc__", "Title.\n\n    A\n    ├── B        b\n    │   └── C\n    └── D\n\nText.\n")
    assert docstring_tree() == {"A": None, "B": "A", "C": "B", "D": "A"}


def test_docstring_tree_matches_the_classes() -> None:
    # The hierarchy drawn in the module's docstring is the one the package defines, both ways.
    drawn = docstring_tree()
    classes = {c.__name__: c for c in package_errors() | {ImagefsError}}
    assert [name for name, parent in drawn.items() if parent is None] == ["ImagefsError"]
    wrong = {name: parent for name, parent in drawn.items() if parent is not None and
             (name not in classes or parent not in classes or classes[name].__bases__ != (classes[parent],))}
    assert wrong == {}, "drawn under a parent that is not their base class (or not defined at all)"
    missing = sorted(set(classes) - set(drawn))
    assert missing == [], f"draw these in errors.py's docstring: {missing}"
