"""The profiling dataset of LitePred (NSDI'24 §3–4): every measured kernel and model, one per line.

A :class:`ProfileDataset` is an append-only JSON Lines file. Each line is one
:class:`ProfileRecord`::

    {"backend": "ort-fp32", "kind": "kernel", "key": "conv-bn-relu|cin=16|cout=32|...",
     "kernel_type": "conv-bn-relu", "config": {...}, "measurement": {...}, "metadata": {...},
     "time": "2025-01-01T00:00:00+00:00"}

(``"model": <name>`` instead of ``"kernel_type"`` for whole models). :meth:`ProfileDataset.append`
writes one line, flushes and fsyncs before returning, so a profiling run that is killed loses
nothing already measured; :meth:`ProfileDataset.measured_keys` tells a restarted run what to skip.

A kill can still cut the line being written: on loading, an unterminated, unparsable *last* line
is skipped with a warning (and cut off before the next append); any other corrupt line is an
error naming its line number, since it means the file was damaged, not interrupted. One writer
per file is assumed.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["KINDS", "ProfileDataset", "ProfileRecord", "record_key"]

logger = logging.getLogger(__name__)

KINDS = ("kernel", "model")


def record_key(name: str, config: Mapping[str, Any]) -> str:
    """A readable, order-independent key: ``name|k1=v1|k2=v2`` with keys sorted, values as JSON."""
    if not isinstance(name, str) or not name or "|" in name:
        raise ValueError(f"record name must be a non-empty string without '|', got {name!r}")
    parts = [name]
    for field in sorted(config):
        if not isinstance(field, str) or "|" in field or "=" in field:
            raise ValueError(f"config key {field!r} of {name!r} must be a string without '|' or '='")
        parts.append(f"{field}={json.dumps(config[field], sort_keys=True, separators=(',', ':'))}")
    return "|".join(parts)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class ProfileRecord:
    """One measured kernel (``kind="kernel"``, ``name`` = kernel type) or model (``name`` = model)."""

    backend: str
    kind: str
    key: str
    name: str
    config: dict[str, Any]
    measurement: dict[str, Any]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    time: str = dataclasses.field(default_factory=_now)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"record kind must be one of {KINDS}, got {self.kind!r}")
        for field in ("backend", "key", "name", "time"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                raise ValueError(f"record {field} must be a non-empty string, got {getattr(self, field)!r}")
        for field in ("config", "measurement", "metadata"):
            if not isinstance(getattr(self, field), dict):
                raise ValueError(f"record {field} must be a dict, got {type(getattr(self, field)).__name__}")
        median = self.measurement.get("median_ms")
        if not isinstance(median, (int, float)) or isinstance(median, bool) or not math.isfinite(median) or median < 0:
            raise ValueError(f"record {self.key!r}: measurement needs a finite median_ms >= 0, got {median!r}")

    @classmethod
    def create(cls, backend: str, kind: str, name: str, config: Mapping[str, Any],
               measurement: Mapping[str, Any] | Any, metadata: Mapping[str, Any] | None = None) -> ProfileRecord:
        """A record keyed by :func:`record_key`; ``measurement`` may be an object with ``to_dict()``."""
        if hasattr(measurement, "to_dict"):
            measurement = measurement.to_dict()
        return cls(backend, kind, record_key(name, config), name, dict(config), dict(measurement),
                   dict(metadata or {}))

    @property
    def kernel_type(self) -> str | None:
        return self.name if self.kind == "kernel" else None

    @property
    def model(self) -> str | None:
        return self.name if self.kind == "model" else None

    @property
    def median_ms(self) -> float:
        return float(self.measurement["median_ms"])

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "kind": self.kind, "key": self.key,
                ("kernel_type" if self.kind == "kernel" else "model"): self.name,
                "config": self.config, "measurement": self.measurement, "metadata": self.metadata,
                "time": self.time}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileRecord:
        if not isinstance(data, Mapping):
            raise ValueError(f"a record must be a JSON object, got {type(data).__name__}")
        kind = data.get("kind")
        name_field = "kernel_type" if kind == "kernel" else "model"
        expected = {"backend", "kind", "key", name_field, "config", "measurement", "metadata", "time"}
        missing, unknown = sorted(expected - set(data)), sorted(set(data) - expected)
        if missing or unknown:
            raise ValueError(f"record fields: missing {missing}, unexpected {unknown}; expected {sorted(expected)}")
        return cls(data["backend"], kind, data["key"], data[name_field], data["config"], data["measurement"],
                   data["metadata"], data["time"])


class ProfileDataset:
    """Append-only JSON Lines file of :class:`ProfileRecord`; loaded once, kept in memory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._records: list[ProfileRecord] = []
        self._truncated_tail = False  # an interrupted last line is in the file, cut it before appending
        self.reload()

    def reload(self) -> None:
        """Read the file again (missing file: empty dataset)."""
        self._records, self._truncated_tail = [], False
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            is_tail = number == len(lines)  # no newline after it: the write was interrupted
            try:
                record = ProfileRecord.from_dict(json.loads(line))
            except (ValueError, UnicodeDecodeError) as error:
                if is_tail:
                    logger.warning("%s: skipping the interrupted last line %d (%d bytes): %s",
                                   self.path, number, len(line), error)
                    self._truncated_tail = True
                    continue
                raise ValueError(f"{self.path}: line {number} is not a valid profile record: {error}") from None
            self._records.append(record)
        if data and not data.endswith(b"\n") and not self._truncated_tail:
            self._truncated_tail = True  # complete JSON without its newline: keep it, add the newline

    def append(self, record: ProfileRecord | Mapping[str, Any]) -> ProfileRecord:
        """Write one record as a line and fsync it; returns the record as stored."""
        if not isinstance(record, ProfileRecord):
            record = ProfileRecord.from_dict({"time": _now(), "metadata": {}, **record})
        line = json.dumps(record.to_dict(), sort_keys=True, allow_nan=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._truncated_tail:
            self._repair_tail()
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())
        self._records.append(record)
        return record

    def _repair_tail(self) -> None:
        """Drop an interrupted last line, or terminate a complete one, so appends start a new line."""
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            ProfileRecord.from_dict(json.loads(tail))
            complete = True
        except (ValueError, UnicodeDecodeError):
            complete = False
        with open(self.path, "r+b") as file:
            if complete:
                file.seek(0, os.SEEK_END)
                file.write(b"\n")
            else:
                file.truncate(cut)
            file.flush()
            os.fsync(file.fileno())
        self._truncated_tail = False

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[ProfileRecord]:
        return iter(self._records)

    def records(self, backend: str | None = None, kind: str | None = None,
                kernel_type: str | None = None, model: str | None = None) -> list[ProfileRecord]:
        """Records matching every given filter, in file order."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
        return [
            record for record in self._records
            if (backend is None or record.backend == backend) and (kind is None or record.kind == kind)
            and (kernel_type is None or record.kernel_type == kernel_type)
            and (model is None or record.model == model)
        ]

    def measured_keys(self, backend: str, kind: str = "kernel") -> set[str]:
        """Keys already measured on ``backend`` (what a resumed run skips)."""
        return {record.key for record in self.records(backend=backend, kind=kind)}

    def backends(self) -> list[str]:
        return sorted({record.backend for record in self._records})

    def to_arrays(self, backend: str, kernel_type: str, features: Sequence[str],
                  target: str = "median_ms") -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)``: config values named by ``features`` (float64) and ``measurement[target]``."""
        selected = self.records(backend=backend, kind="kernel", kernel_type=kernel_type)
        features_x, targets = [], []
        for record in selected:
            missing = [name for name in features if name not in record.config]
            if missing or target not in record.measurement:
                raise ValueError(f"record {record.key!r} lacks features {missing} or target {target!r}; "
                                 f"its config has {sorted(record.config)}")
            features_x.append([float(record.config[name]) for name in features])
            targets.append(float(record.measurement[target]))
        return (np.asarray(features_x, dtype=np.float64).reshape(len(selected), len(features)),
                np.asarray(targets, dtype=np.float64))
