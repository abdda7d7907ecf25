"""Store scans kept until a path they read changes, so a listing costs a few stats per store."""

from __future__ import annotations

import logging
from collections.abc import Callable

from minerva.discovery import StoreLocation, discover
from minerva.discovery.scan import SkippedModel, StoreScan, unchanged

logger = logging.getLogger(__name__)


class StoreCache:
    """The latest scan of each store location; a location is scanned again only when its watched paths changed."""

    def __init__(self, scanner: Callable[[StoreLocation], StoreScan] = discover):
        self._scanner = scanner
        self._scans: dict[StoreLocation, StoreScan] = {}

    def scan(self, location: StoreLocation) -> StoreScan:
        """The location's scan, current as of this call."""
        cached = self._scans.get(location)
        if cached is not None and unchanged(cached):
            return cached
        try:
            result = self._scanner(location)
        except OSError as exc:  # a store that changes under the scan: report it, scan again next time
            logger.warning("cannot scan the %s store at %s: %s", location.store, location.root, exc)
            result = StoreScan(skipped=(SkippedModel(location.store, location.root, location.store,
                                                     f"cannot scan: {exc.strerror or exc}"),),
                               watched=((str(location.root), -1),))  # no mtime is -1: the next listing scans again
        if cached is None or result != cached:
            for skipped in result.skipped:
                if cached is None or skipped not in cached.skipped:
                    logger.warning("%s: skipping %s (%s): %s", location.store, skipped.name, skipped.path,
                                   skipped.reason)
        self._scans[location] = result
        return result

    def scans(self) -> dict[StoreLocation, StoreScan]:
        """The latest scan of every location scanned so far."""
        return dict(self._scans)
