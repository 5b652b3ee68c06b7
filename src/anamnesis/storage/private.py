"""Files that hold secrets or patient text: private to the service's user from the moment they exist."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """`path` (parents included) as a directory only its owner can enter; tightened if it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    path.chmod(PRIVATE_DIR)
    return path


def write_private(path: Path, text: str, *, replace: bool = True) -> bool:
    """Writes `text` to `path` with mode 0600 from the file's creation (never readable by others, not
    even for a moment), through a temporary name, so that readers see the whole file or none.
    With `replace=False` an existing file is kept; returns whether this call wrote `path`."""
    staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        if replace:
            staging.replace(path)
            return True
        try:
            os.link(staging, path)  # fails when the file exists: another writer got there first
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
