"""What can go wrong, split by what the caller does about it, and the one errno table.

    ImagefsError
    ├── EngineError              the engine answered with an error status
    │   ├── BadParameter         400
    │   ├── AccessDenied         401, 403
    │   ├── NoSuchImage          404
    │   ├── Conflict             409 (in use, must force)
    │   ├── NotSupported         501
    │   └── EngineFailed         500 and any other status, or an error inside a stream
    │       └── BrokenAnswer     an answer that breaks HTTP or is not the JSON it must be
    ├── EngineUnreachable        no connection, or the connection broke
    ├── EngineTimeout            the engine did not answer in time
    ├── ExportBroken             an export that is not whole, not its file's image, or of another length
    │   └── ExportMoved          it holds another image: a tag moved while the engine saved it
    ├── SpoolError               the local cache failed (a full disk is ENOSPC): not the engine's fault
    ├── Closing                  the mount is going away: imagefs ended it, the engine did not fail
    ├── BadCommand               a control write imagefs refuses before sending anything
    ├── CredentialsFailed        the docker CLI's credentials could not be had (config.json, a helper)
    ├── UploadRefused            an upload imagefs ends itself, so that the engine creates nothing
    │   ├── BadUpload            what was written is not one whole archive
    │   ├── Interrupted          its writer was killed or interrupted
    │   ├── Unseekable           a write that does not follow the one before
    │   ├── Finished             a write after the upload was committed or aborted
    │   └── Busy                 the same target is being uploaded already
    ├── NotPermitted             what the tree never allows (rm, mkdir, …)
    └── ReadOnly                 the mount is read-only

Only the FUSE adapter turns these into `FUSEError`; everything below it raises
these classes, so the engine client and the tree stay free of FUSE.
"""

from __future__ import annotations

import errno


class ImagefsError(Exception):
    """Root of every error imagefs itself raises."""


class EngineError(ImagefsError):
    """The engine answered with an error; `message` is the engine's own text."""

    def __init__(self, status: int, message: str, request: str = "") -> None:
        super().__init__(f"{request}: {status} {message}" if request else f"{status} {message}")
        self.status = status
        self.message = message
        self.request = request


class BadParameter(EngineError):
    pass


class AccessDenied(EngineError):
    pass


class NoSuchImage(EngineError):
    pass


class Conflict(EngineError):
    pass


class NotSupported(EngineError):
    pass


class EngineFailed(EngineError):
    pass


class BrokenAnswer(EngineFailed):
    """The engine's answer broke HTTP (bad framing, headers): EIO like any failure of the engine."""

    def __init__(self, message: str, request: str = "") -> None:
        super().__init__(502, message, request)


class EngineUnreachable(ImagefsError):
    """The engine could not be reached, or the connection broke: EIO, never ENOENT."""


class EngineTimeout(ImagefsError):
    pass


class ExportBroken(ImagefsError):
    """An export that ended but is not what its file promises: EIO, and nothing of it is served."""


class ExportMoved(ExportBroken):
    """A whole save of a reference that another image took while the engine saved it: what the reference
    names now, not the image asked for (that image can still be saved by its ID)."""


class SpoolError(ImagefsError):
    """The local spool failed; the reader gets the OSError's own errno (ENOSPC for a full disk)."""

    def __init__(self, message: str, errno_: int) -> None:
        super().__init__(message)
        self.errno = errno_

    @classmethod
    def of(cls, exc: OSError, what: str) -> SpoolError:
        return cls(f"{what}: {exc.strerror or exc}", exc.errno or errno.EIO)


class Closing(ImagefsError):
    """The mount is closing: what was running is ended by imagefs itself (trio's Closed, not Broken)."""


class BadCommand(ImagefsError):
    """Malformed control input; nothing was sent to the engine."""


class CredentialsFailed(ImagefsError):
    """config.json or a credential helper failed: EACCES, as credentials the registry refused."""


class UploadRefused(ImagefsError):
    """An upload imagefs aborted or refused: the engine got no complete body, so it created nothing."""


class BadUpload(UploadRefused):
    pass


class Interrupted(UploadRefused):
    pass


class Unseekable(UploadRefused):
    pass


class Finished(UploadRefused):
    pass


class Busy(UploadRefused):
    pass


class NotPermitted(ImagefsError):
    """rm, rmdir, mv, mkdir and the like: the tree never changes that way."""


class ReadOnly(ImagefsError):
    pass


_BY_STATUS: dict[int, type[EngineError]] = {
    400: BadParameter,
    401: AccessDenied,
    403: AccessDenied,
    404: NoSuchImage,
    409: Conflict,
    501: NotSupported,
}


def engine_error(status: int, message: str, request: str = "") -> EngineError:
    """The most specific EngineError for an HTTP status."""
    return _BY_STATUS.get(status, EngineFailed)(status, message, request)


ERRNO: dict[type[ImagefsError], int] = {
    BadParameter: errno.EINVAL,
    AccessDenied: errno.EACCES,
    NoSuchImage: errno.ENOENT,
    Conflict: errno.EBUSY,
    NotSupported: errno.ENOTSUP,
    EngineFailed: errno.EIO,
    BrokenAnswer: errno.EIO,
    EngineError: errno.EIO,
    EngineUnreachable: errno.EIO,
    EngineTimeout: errno.ETIMEDOUT,
    ExportBroken: errno.EIO,
    ExportMoved: errno.EIO,
    SpoolError: errno.EIO,  # only when the OSError had no errno: see errno_for
    Closing: errno.EIO,
    BadCommand: errno.EINVAL,
    CredentialsFailed: errno.EACCES,
    UploadRefused: errno.EIO,
    BadUpload: errno.EINVAL,
    Interrupted: errno.EINTR,
    Unseekable: errno.ESPIPE,
    Finished: errno.EBADF,
    Busy: errno.EBUSY,
    NotPermitted: errno.EPERM,
    ReadOnly: errno.EROFS,
}


def errno_for(exc: ImagefsError) -> int:
    """The errno of SPEC §4 for an error, by its most specific class (a spool's failure: its own)."""
    if isinstance(exc, SpoolError):
        return exc.errno
    for cls in type(exc).__mro__:
        if cls in ERRNO:
            return ERRNO[cls]
    return errno.EIO
