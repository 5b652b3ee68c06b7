"""Model artifacts on disk: written to a temporary folder, fsynced, renamed; identified by sha256.

An artifact is a folder of files. Its digest is the sha256 of a manifest listing each file's
relative path and sha256, so any changed, missing or added byte changes the digest.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from anamnesis.storage.errors import ArtifactIntegrityError, ArtifactWriteError
from anamnesis.storage.hashing import file_sha256

FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def directory_digest(folder: Path) -> str:
    manifest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        manifest.update(f"{relative}\0{file_sha256(path)}\n".encode())
    return manifest.hexdigest()


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_artifact(root: Path, name: str, fill: Callable[[Path], None]) -> tuple[Path, str]:
    """Lets `fill` write into a temporary folder, then renames it to `root/name` atomically.

    Returns the final path and the artifact's digest. A failure (a full or read-only disk, an
    exception in `fill`) leaves no folder under the final name and raises ArtifactWriteError.
    """
    staging = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    final = root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        fill(staging)
        _check_no_pickles(staging)
        _fsync_tree(staging)
        digest = directory_digest(staging)
        if final.exists():
            raise ArtifactWriteError(f"artifact {final} already exists")
        staging.rename(final)
    except ArtifactWriteError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as error:
        # Writers other than Python's own (safetensors, ONNX) report a full disk in their own words.
        shutil.rmtree(staging, ignore_errors=True)
        raise ArtifactWriteError(f"cannot write the model artifact under {root}: {_reason(error)}") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final, digest


def _reason(error: Exception) -> str:
    text = str(error)
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in text:
        return "the artifact directory is full"
    if getattr(error, "errno", None) == errno.EROFS or "Read-only file system" in text:
        return "the artifact directory is read-only (Read-only file system)"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {text[:300]}"


def _check_no_pickles(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.suffix in FORBIDDEN_SUFFIXES:
            raise ArtifactWriteError(f"refusing to store {path.name}: model weights must be safetensors")


def verify_artifact(folder: Path, expected_sha256: str) -> None:
    """Refuses an artifact that is missing, holds pickled weights, or whose bytes changed."""
    if not folder.is_dir():
        raise ArtifactIntegrityError(f"model artifact {folder} is missing")
    for path in folder.rglob("*"):
        if path.suffix in FORBIDDEN_SUFFIXES:
            raise ArtifactIntegrityError(f"model artifact {folder} holds {path.name}: only safetensors are loaded")
    actual = directory_digest(folder)
    if actual != expected_sha256:
        raise ArtifactIntegrityError(
            f"model artifact {folder} does not match its recorded sha256 (expected {expected_sha256[:12]}…, "
            f"found {actual[:12]}…): refusing to load it"
        )
