"""Checkpoints: global parameters plus the state to continue a run exactly, in one safetensors file.

All randomness in a run is a pure function of (seed, stream, round, client) (`seeding.py`), so
the state is small: the round reached, the metrics so far and a digest of the config. The state
travels in the safetensors header's metadata, and a SHA-256 over every tensor's bytes detects a
tampered file. The file is written atomically; loading never executes code (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from .outputs.atomic import atomic_write_bytes

FORMAT = 1
MAX_HEADER = 100 * 2**20  # a larger header is not one we wrote


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or read: nothing of it is used."""


def tensor_digest(params: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(params):
        t = params[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: str | Path, params: dict[str, Tensor], state: dict[str, Any]) -> None:
    """Atomically write `params` and the JSON-serializable `state`."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in params.items()}
    meta = {"format": str(FORMAT), "state": json.dumps(state, sort_keys=True), "sha256": tensor_digest(tensors)}
    atomic_write_bytes(path, st_save(tensors, metadata=meta))


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(params, state); CheckpointError if the file is missing, truncated, tampered or foreign."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {str(p)!r}")
    data = p.read_bytes()
    meta = _metadata(data, p)
    try:
        params = st_load(data)
    except SafetensorError as exc:
        raise CheckpointError(f"checkpoint {str(p)!r} is truncated or corrupt: {exc}") from None
    if meta.get("format") != str(FORMAT) or "state" not in meta or "sha256" not in meta:
        raise CheckpointError(f"checkpoint {str(p)!r} was not written by fedbrb_fast (format {meta.get('format')!r})")
    if tensor_digest(params) != meta["sha256"]:
        raise CheckpointError(f"checkpoint {str(p)!r} failed its SHA-256 check: the tensors were modified")
    try:
        state = json.loads(meta["state"])
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {str(p)!r} has an unreadable state record") from None
    return params, state


def _metadata(data: bytes, p: Path) -> dict[str, str]:
    """The header's __metadata__, read without trusting any size it claims."""
    if len(data) < 8:
        raise CheckpointError(f"checkpoint {str(p)!r} is truncated ({len(data)} bytes)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(MAX_HEADER, len(data) - 8):
        raise CheckpointError(f"checkpoint {str(p)!r} is truncated or corrupt (header of {size} bytes)")
    try:
        header = json.loads(data[8:8 + size])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {str(p)!r} has a corrupt header") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {str(p)!r} was not written by fedbrb_fast (no metadata)")
    return meta
