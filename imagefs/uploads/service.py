"""Every upload of one mount: one at a time per target, and the last one's record kept for reading."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio

from ..activity import Activity
from ..catalog import Catalog
from ..engine import Engine
from ..errors import Busy, Closing
from ..spool.store import Store
from .kinds import Request
from .upload import ENDED, Upload

KEPT_RECORDS = 200  # ended uploads whose outcome stays readable, per kind


@dataclass
class Uploads:
    engine: Engine
    catalog: Catalog
    activity: Activity
    nursery: trio.Nursery
    store: Store  # the cache directory: a local spool goes there
    records: dict[tuple[str, str], Upload] = field(default_factory=dict)  # (kind, target) -> the latest
    started: float = field(default_factory=time.time)

    def begin(self, request: Request, pid: int) -> Upload:
        key = (request.kind, request.target)
        running = self.records.get(key)
        if running is not None and running.state not in ENDED:
            raise Busy(f"{request.target} is being uploaded already (by pid {running.pid})")
        self.records.pop(key, None)  # re-inserted last: the dict's order is the records' age
        upload = self.records[key] = Upload(request, self.engine, self.catalog, self.activity, self.nursery, pid,
                                            self.store)
        self._trim(request.kind)
        return upload

    def abort(self) -> None:
        """The mount is closing: every running upload ends now, creating nothing, and its writer is answered."""
        for upload in self.records.values():
            upload.cancel(Closing("the mount is closing; the upload was aborted"))

    def get(self, kind: str, target: str) -> Upload | None:
        return self.records.get((kind, target))

    def targets(self, kind: str) -> list[str]:
        return [target for k, target in self.records if k == kind]

    def _trim(self, kind: str) -> None:
        ended = [key for key, up in self.records.items() if key[0] == kind and up.state in ENDED]
        for key in ended[: max(0, len(ended) - KEPT_RECORDS)]:
            del self.records[key]
