"""How much memory this machine has."""

from __future__ import annotations

import os


def physical_memory_bytes() -> int:
    """Installed RAM, from sysconf."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 * 1024**3
