"""Crash-safe files of a run: every file is written to a temporary file in the same
folder, flushed to disk and renamed over the old one, so a kill at any moment leaves
either the old or the new file, never a truncated one. The checkpoint also keeps the
previous one (``checkpoint.prev.pt``)."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (truncated, corrupt, not a checkpoint)."""


def _fsync_dir(folder: Path):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes, keep_previous: str | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync,
    ``os.replace``). With ``keep_previous`` (a file name in the same folder), the old
    ``path`` is first kept under that name, also atomically: at every moment ``path``
    holds a complete file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.is_file():
            prev = path.with_name(keep_previous)
            prev_tmp = prev.with_name(f".{prev.name}.tmp{os.getpid()}")
            prev_tmp.unlink(missing_ok=True)
            try:
                os.link(path, prev_tmp)  # no copy: the old file gets a second name
            except OSError:
                shutil.copyfile(path, prev_tmp)
            os.replace(prev_tmp, prev)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path, text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(state: dict, folder) -> Path:
    """``torch.save`` ``state`` to ``folder/checkpoint.pt`` atomically, keeping the
    previous checkpoint as ``checkpoint.prev.pt``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(Path(folder) / CHECKPOINT, buf.getvalue(), keep_previous=PREVIOUS)


def _read(path: Path, map_location):
    return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(folder, map_location=None) -> dict:
    """Read ``folder/checkpoint.pt`` (``weights_only=True``: tensors and plain Python
    containers only). Raises ``FileNotFoundError`` when there is none and
    :class:`CheckpointError` naming the file and the previous good checkpoint when it
    cannot be read."""
    folder = Path(folder)
    path, prev = folder / CHECKPOINT, folder / PREVIOUS
    if not path.is_file():
        hint = f"; the previous checkpoint {prev} exists: rename it to {CHECKPOINT} to resume from it" \
            if prev.is_file() else ""
        raise FileNotFoundError(f"resume: there is no checkpoint at {path}{hint}")
    try:
        state = _read(path, map_location)
        if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
            raise CheckpointError("not a tritonsparse trainer checkpoint")
        return state
    except Exception as e:  # noqa: BLE001 - any failure to read it is reported the same way
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:200]
        if "weights only load failed" in str(e).lower():
            why = (f"{type(e).__name__}: it holds objects other than tensors and plain values, which "
                   "torch.load(weights_only=True) refuses; a checkpoint of an older version?")
        if not prev.is_file():
            hint = "there is no previous checkpoint to fall back on"
        else:
            try:
                ok = _read(prev, "cpu")
                hint = (f"the previous checkpoint {prev} (epoch {ok['epoch']}) is readable: rename it to "
                        f"{CHECKPOINT} to resume from it")
            except Exception:  # noqa: BLE001
                hint = f"the previous checkpoint {prev} cannot be read either"
        raise CheckpointError(f"the checkpoint {path} cannot be read ({why}); {hint}") from e
