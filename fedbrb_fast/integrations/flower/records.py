"""What crosses the wire: a node's plan as ConfigRecord entries, sub-models as ArrayRecords, and
the checks that turn a reply into an update or a reason to skip it."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, ConfigRecordValues, Message
from numpy.lib import format as npy_format
from torch import Tensor

from ...plans import ClientPlan, in_every_segment, window
from ...training import LocalTraining

_FLOAT_DTYPES = {"float16", "float32", "float64"}

R = TypeVar("R")


class MalformedReply(ValueError):
    """A reply that cannot become an update; the message says why."""


@dataclass(frozen=True)
class PlanRecord:
    """A node's plan: its width and, per channel group, the window `(start, size)` of channels it
    holds inside each of the group's `segments` (docs/algorithm.md#segments): windows wrap around
    at the segment size N_g / R_g and apply in every segment (R_g = 1: the whole group)."""

    method: str
    width: float
    starts: tuple[int, ...]
    sizes: tuple[int, ...]
    group_sizes: tuple[int, ...]
    segments: tuple[int, ...]

    @classmethod
    def of(cls, method: str, plan: ClientPlan, group_sizes: Sequence[int],
           group_segments: Sequence[int] = ()) -> PlanRecord:
        segments = tuple(group_segments) or (1,) * len(group_sizes)
        starts, sizes = [], []
        for ix, n, r in zip(plan.indices, group_sizes, segments, strict=True):
            start, size = int(ix[0]), len(ix) // r
            if not torch.equal(ix, in_every_segment(window(start, size, n // r), r, n // r)):
                raise ValueError(f"{method}: a plan that is not a window (in every segment) cannot be sent as one")
            starts.append(start)
            sizes.append(size)
        return cls(method, plan.width, tuple(starts), tuple(sizes), tuple(group_sizes), segments)

    def indices(self) -> tuple[Tensor, ...]:
        return tuple(in_every_segment(window(s, k, n // r), r, n // r)
                     for s, k, n, r in zip(self.starts, self.sizes, self.group_sizes, self.segments, strict=True))

    def to_config(self) -> dict[str, ConfigRecordValues]:
        return {"plan-method": self.method, "plan-width": float(self.width), "plan-starts": list(self.starts),
                "plan-sizes": list(self.sizes), "plan-group-sizes": list(self.group_sizes),
                "plan-segments": list(self.segments)}

    @classmethod
    def from_config(cls, config: ConfigRecord | Mapping[str, object]) -> PlanRecord:
        """The plan of `config`; without "plan-segments" (senders before segments) every group has one."""
        try:
            method, width = str(config["plan-method"]), config_float(config, "plan-width")
            starts, sizes, groups = (config_ints(config, k) for k in ("plan-starts", "plan-sizes", "plan-group-sizes"))
            segments = config_ints(config, "plan-segments") if "plan-segments" in config else (1,) * len(groups)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the message carries no valid plan (plan-* entries): {exc!r}") from None
        if not (len(starts) == len(sizes) == len(groups) == len(segments)):
            raise ValueError("plan-starts, plan-sizes, plan-group-sizes and plan-segments differ in length")
        if any(r < 1 or n % r for n, r in zip(groups, segments, strict=True)):
            raise ValueError(f"plan-segments {list(segments)} do not split channel groups {list(groups)} equally")
        spans = [n // r for n, r in zip(groups, segments, strict=True)]
        if not 0 < width <= 1 or any(not (0 <= s < d and 1 <= k <= d) for s, k, d in zip(starts, sizes, spans,
                                                                                           strict=True)):
            raise ValueError(f"plan out of range: width {width}, windows {list(zip(starts, sizes, strict=True))} "
                             f"of {spans}")
        return cls(method, width, starts, sizes, groups, segments)


def config_int(config: Mapping[str, object], key: str, default: int | None = None) -> int:
    """`config[key]` (a ConfigRecord entry) as int() reads it; `default` when absent, if given."""
    return int(_scalar(config[key] if default is None else config.get(key, default), key))


def config_float(config: Mapping[str, object], key: str, default: float | None = None) -> float:
    """`config[key]` (a ConfigRecord entry) as float() reads it; `default` when absent, if given."""
    return float(_scalar(config[key] if default is None else config.get(key, default), key))


def config_ints(config: Mapping[str, object], key: str) -> tuple[int, ...]:
    """`config[key]`, a list of integers, as a tuple."""
    values = config[key]
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"config entry {key!r}: expected a list of integers, got {values!r}")
    return tuple(int(_scalar(v, key)) for v in values)


def _scalar(value: object, key: str) -> int | float | str | bytes:
    """A ConfigRecord scalar that int() and float() may read (a bool is an int)."""
    if not isinstance(value, (int, float, str, bytes)):
        raise TypeError(f"config entry {key!r}: expected a number, got {value!r}")
    return value


def training_config(hp: LocalTraining) -> dict[str, ConfigRecordValues]:
    """A round's local training as ConfigRecord entries (clipping stays the node's own)."""
    return {"lr": hp.lr, "local-epochs": hp.epochs, "batch-size": hp.batch_size, "momentum": hp.momentum,
            "weight-decay": hp.weight_decay}


def training_from_config(config: ConfigRecord | Mapping[str, object], defaults: LocalTraining) -> LocalTraining:
    """The local training that `training_config` entries in `config` set, `defaults` elsewhere."""
    return LocalTraining(epochs=config_int(config, "local-epochs", defaults.epochs),
                         batch_size=config_int(config, "batch-size", defaults.batch_size),
                         lr=config_float(config, "lr", defaults.lr),
                         momentum=config_float(config, "momentum", defaults.momentum),
                         weight_decay=config_float(config, "weight-decay", defaults.weight_decay),
                         clip_norm=defaults.clip_norm)


def array_record(params: Mapping[str, Tensor]) -> ArrayRecord:
    return ArrayRecord({k: Array(v.detach().cpu().contiguous().numpy()) for k, v in params.items()})


def decode_arrays(record: ArrayRecord, expected: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """The record's tensors (float32), checked against the expected names and shapes."""
    out = {name: torch.empty(shape, dtype=torch.float32) for name, shape in expected.items()}
    decode_into(record, out)
    return out


def decode_into(record: ArrayRecord, slots: Mapping[str, Tensor]) -> None:
    """Copy the record's tensors into `slots` (same names and shapes; e.g. rows of stacked
    buffers), in one copy from the message bytes. The declared metadata is checked before any
    byte is parsed, then the .npy header (never with pickle) against it."""
    names = set(record.keys())
    if names != set(slots):
        missing, extra = sorted(set(slots) - names), sorted(names - set(slots))
        raise MalformedReply(f"tensors differ from the plan: missing {missing}, unexpected {extra}")
    for name, slot in slots.items():
        arr, shape = record[name], tuple(slot.shape)
        if tuple(arr.shape) != shape or arr.dtype not in _FLOAT_DTYPES or arr.stype != "numpy.ndarray":
            raise MalformedReply(f"{name}: {arr.dtype}{list(arr.shape)}, "
                                 f"expected a float tensor of shape {list(shape)}")
        np.copyto(slot.numpy(), _npy_view(arr.data, name, shape), casting="same_kind")


def _npy_view(data: bytes, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only view of the array in .npy bytes, after checking its header."""
    try:
        got_shape, fortran, dtype, offset = _npy_header(bytes(data[:_npy_header_end(data)]))
    except (ValueError, SyntaxError, EOFError, OSError) as exc:
        raise MalformedReply(f"{name}: unreadable array data ({exc})") from None
    count = math.prod(got_shape)
    if tuple(got_shape) != shape or dtype.kind != "f" or len(data) - offset != count * dtype.itemsize:
        raise MalformedReply(f"{name}: data holds {dtype}{list(got_shape)} in {len(data) - offset} bytes, "
                             f"not a float array of shape {list(shape)}")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")


def _npy_header_end(data: bytes) -> int:
    """Where the .npy header ends: magic (6 bytes), version (2), length (2 bytes in 1.0, 4 after)."""
    if len(data) < 12 or data[:6] != b"\x93NUMPY":
        raise ValueError("not .npy data")
    width = 2 if data[6] == 1 else 4
    return 8 + width + int.from_bytes(data[8:8 + width], "little")


@functools.lru_cache(maxsize=4096)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) by numpy's own parser (no pickle); cached, since
    a round's replies repeat the same few headers."""
    fp = io.BytesIO(header)
    version = npy_format.read_magic(fp)
    read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, fortran, dtype = read_header(fp)
    if fp.tell() != len(header):
        raise ValueError("malformed .npy header")
    return tuple(shape), fortran, dtype, len(header)


def single_record(records: Mapping[str, R], key: str, kind: str) -> R:
    """`records[key]`, or the only record of that kind when the key is not used."""
    if key in records:
        return records[key]
    if len(records) == 1:
        return next(iter(records.values()))
    raise MalformedReply(f"no {kind} under {key!r} (found {sorted(records)})")


def reply_weight(reply: Message, key: str) -> float:
    metrics = single_record(reply.content.metric_records, "metrics", "MetricRecord")
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise MalformedReply(f"metric {key!r} must be a positive finite number, got {value!r}")
    return float(value)


def reply_metric(reply: Message, name: str) -> float | None:
    metrics = reply.content.metric_records
    for record in metrics.values():
        value = record.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None
