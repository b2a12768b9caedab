"""Whether a process is running, as every part of the lab asks it: the notebook's lab record before it signals a
process (backend/notebook_lab.py), the feature cache before it removes a scratch folder of a process that may still
write there (worker/engine/cachedir.py), the tests that wait for a process to end. Torch-free and web-free."""
from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """Is `pid` running? A process that exited but that its parent has not reaped yet (a zombie) is not: it will
    never write or answer again. Another user's process counts as running (it exists; we may not signal it). Where
    /proc cannot say (another OS), existing is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
