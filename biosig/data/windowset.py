"""WindowSet: the one in-memory form of windowed signals between I/O and the model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import cached_property
from typing import Any

import numpy as np

from biosig.data.channels import check_channels, infer_modality, units_for
from biosig.errors import DataError

#: the shortest window a dataset may hold: shorter is no signal any backbone can patch
MIN_WINDOW_SAMPLES = 8


@dataclasses.dataclass(eq=False)
class WindowSet:
    """Windowed multichannel signals with labels, subjects and temporal order.

    signals  float32 [N, C, T]; labels int64 [N] (-1 = unlabelled); subject str [N];
    order    int64 [N, k] with column names `order_names` (e.g. parent_window_id, sub_window_id);
    meta     optional float64 [N] per-window columns (e.g. window_start, window_end in seconds).
    Channel identity is by name (`channels`), never by position.
    """

    signals: np.ndarray
    labels: np.ndarray
    subject: np.ndarray
    order: np.ndarray
    channels: list[str]
    fs: float
    order_names: list[str] = dataclasses.field(default_factory=lambda: ["window_id"])
    meta: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    modality: str = ""
    subject_name: str = "subject"
    label_name: str = "label"
    class_names: list[str] = dataclasses.field(default_factory=list)
    source: str = ""
    #: the content digest of a WindowSet read back from where it was stored after full validation (the Arrow
    #: cache): the per-sample checks and the hash are not repeated; empty (the default) checks everything
    validated_digest: dataclasses.InitVar[str] = ""

    def __post_init__(self, validated_digest: str = "") -> None:
        self.channels = list(self.channels)
        self.order_names = list(self.order_names)
        self.fs = float(self.fs)
        if not self.modality and self.channels and all(isinstance(c, str) for c in self.channels):
            try:
                self.modality = infer_modality(self.channels)
            except KeyError:
                pass  # unknown channels are reported by validate()
        self.validate(samples=not validated_digest)
        if validated_digest:
            self.__dict__["digest"] = validated_digest  # the cached_property, known

    # ------------------------------------------------------------------ shape
    @property
    def n_windows(self) -> int:
        return int(self.signals.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.signals.shape[1])

    @property
    def n_samples(self) -> int:
        return int(self.signals.shape[2])

    @property
    def window_s(self) -> float:
        return self.n_samples / self.fs

    @property
    def units(self) -> dict[str, str]:
        return units_for(self.channels)

    def channel_index(self, name: str) -> int:
        if name not in self.channels:
            raise DataError(f"channel '{name}' not in dataset {self.where} (has {self.channels})")
        return self.channels.index(name)

    @property
    def where(self) -> str:
        return self.source or "<in-memory WindowSet>"

    # ------------------------------------------------------------- validation
    def validate(self, *, samples: bool = True) -> None:
        """Raise DataError naming what is wrong and where (`samples=False`: all but the pass over every
        sample for NaN/Inf, for content validated when it was stored)."""
        where = self.where
        s = self.signals
        if not isinstance(s, np.ndarray) or s.ndim != 3:
            shape = getattr(s, "shape", None)
            raise DataError(f"signals in {where} must be an array [N, C, T], got shape {shape}")
        if s.dtype != np.float32:
            raise DataError(f"signals in {where} must be float32, got {s.dtype}")
        n, c, t = s.shape
        if n == 0:
            raise DataError(f"empty dataset: {where} has no windows")
        if t < MIN_WINDOW_SAMPLES:
            raise DataError(f"windows in {where} have {t} sample(s): a window needs at least {MIN_WINDOW_SAMPLES} "
                            "(a patch of any backbone is longer)")
        if len(self.channels) != c:
            raise DataError(f"{where}: {len(self.channels)} channel names for {c} signal channels")
        check_channels(self.channels, where)
        if not np.isfinite(self.fs) or self.fs <= 0:
            raise DataError(f"sampling rate fs in {where} must be positive, got {self.fs}")
        if samples:
            self._check_finite()
        self._check_column("labels", self.labels, np.int64)
        if (self.labels < -1).any():
            raise DataError(f"labels in {where} must be >= 0 (or -1 for unlabelled)")
        if self.class_names and (unnamed := sorted(set(self.labels[self.labels >= len(self.class_names)].tolist()))):
            raise DataError(f"labels {unnamed} in {where} have no class name: it names {len(self.class_names)} "
                            f"classes {self.class_names} (labels 0..{len(self.class_names) - 1})")
        if self.subject.shape != (n,) or self.subject.dtype.kind != "U":
            raise DataError(f"subject in {where} must be a str array of shape ({n},)")
        if self.order.ndim != 2 or self.order.shape[0] != n or self.order.dtype != np.int64:
            raise DataError(f"order keys in {where} must be int64 [N, k], got {self.order.dtype} {self.order.shape}")
        if self.order.shape[1] != len(self.order_names):
            raise DataError(f"{where}: {self.order.shape[1]} order columns but names {self.order_names}")
        for name, column in self.meta.items():
            self._check_column(f"meta column '{name}'", column, np.float64)

    def _check_column(self, what: str, column: np.ndarray, dtype: Any) -> None:
        n = self.n_windows
        if not isinstance(column, np.ndarray) or column.shape != (n,):
            raise DataError(f"{what} in {self.where} must have shape ({n},), got {getattr(column, 'shape', None)}")
        if column.dtype != dtype:
            raise DataError(f"{what} in {self.where} must be {np.dtype(dtype)}, got {column.dtype}")

    def _check_finite(self) -> None:
        # Screen: a window sum is non-finite if any sample is NaN/Inf (or, harmlessly, on overflow);
        # it reads the data once without a boolean mask. Locate the culprit only when the screen trips.
        if np.isfinite(np.add.reduce(self.signals, axis=-1)).all():
            return
        for ci, name in enumerate(self.channels):
            finite = np.isfinite(self.signals[:, ci, :])
            if not finite.all():
                w, t = np.argwhere(~finite)[0]
                value = self.signals[w, ci, t]
                raise DataError(
                    f"{value} in signals of {self.where}: window {w}, channel {name}, sample {t} "
                    f"({int((~finite).sum())} non-finite samples in that channel)"
                )

    def sort_keys(self) -> np.ndarray:
        """Integer sort keys [N, 1+k]: subject rank, then the order columns."""
        _, subject_rank = np.unique(self.subject, return_inverse=True)
        return np.column_stack([subject_rank.astype(np.int64), self.order])

    def check_sorted(self) -> None:
        """Rows must be strictly increasing by (subject, *order_names)."""
        keys = self.sort_keys()
        if len(keys) < 2:
            return
        diff = np.diff(keys, axis=0)
        # First non-zero difference per adjacent pair decides the lexicographic order.
        nonzero = diff != 0
        first = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), -1)
        decisive = np.where(first >= 0, diff[np.arange(len(diff)), np.maximum(first, 0)], 0)
        bad = np.flatnonzero(decisive <= 0)
        if bad.size:
            i = int(bad[0])
            names = [self.subject_name, *self.order_names]
            row = lambda j: {names[0]: str(self.subject[j]), **dict(zip(names[1:], self.order[j].tolist()))}  # noqa: E731
            kind = "duplicated" if decisive[i] == 0 else "out of order"
            raise DataError(
                f"rows of {self.where} are not sorted by ({', '.join(names)}): rows {i} and {i + 1} are {kind} "
                f"({row(i)} then {row(i + 1)})"
            )

    # ------------------------------------------------------------- transforms
    def take(self, index: np.ndarray) -> "WindowSet":
        """A new WindowSet with the rows at `index` (no validation cost beyond the finite check)."""
        return dataclasses.replace(
            self,
            signals=np.ascontiguousarray(self.signals[index]),
            labels=self.labels[index],
            subject=self.subject[index],
            order=self.order[index],
            meta={k: v[index] for k, v in self.meta.items()},
        )

    def check_compatible(self, other: "WindowSet") -> None:
        """DataError unless `other` can be appended: same channels, fs, length, order and meta columns."""
        for attr in ("channels", "fs", "order_names", "class_names", "n_samples"):
            if getattr(other, attr) != getattr(self, attr):
                raise DataError(f"{other.where} has {attr} {getattr(other, attr)!r}, {self.where} has "
                                f"{getattr(self, attr)!r}: they cannot form one dataset")
        if sorted(other.meta) != sorted(self.meta):
            raise DataError(f"{other.where} has meta columns {sorted(other.meta)}, {self.where} {sorted(self.meta)}")

    @staticmethod
    def concat(parts: list["WindowSet"], source: str = "") -> "WindowSet":
        """One WindowSet from parts with the same channels, fs, order and meta columns, rows re-sorted."""
        first = parts[0]
        for part in parts[1:]:
            first.check_compatible(part)
        joined = dataclasses.replace(
            first, signals=np.concatenate([p.signals for p in parts]),
            labels=np.concatenate([p.labels for p in parts]), subject=np.concatenate([p.subject for p in parts]),
            order=np.concatenate([p.order for p in parts]),
            meta={k: np.concatenate([p.meta[k] for p in parts]) for k in first.meta}, source=source or first.source)
        return joined.sorted()

    def sorted(self) -> "WindowSet":
        keys = self.sort_keys()
        index = np.lexsort(keys.T[::-1])
        if np.array_equal(index, np.arange(len(index))):
            return self
        return self.take(index)

    # ---------------------------------------------------------------- digest
    @cached_property
    def digest(self) -> str:
        """sha256 of the content: header, signals, labels, subjects, order, meta.

        Independent of how the arrays are laid out in memory and of the subject string width.
        """
        h = hashlib.sha256()
        header = {
            "channels": self.channels, "fs": self.fs, "order_names": self.order_names,
            "meta": sorted(self.meta), "shape": list(self.signals.shape),
            "label_name": self.label_name, "class_names": self.class_names,
        }
        h.update(json.dumps(header, sort_keys=True).encode())
        h.update(memoryview(np.ascontiguousarray(self.signals)).cast("B"))
        h.update(np.ascontiguousarray(self.labels).tobytes())
        uniques, codes = np.unique(self.subject, return_inverse=True)
        h.update("\x00".join(uniques.tolist()).encode())
        h.update(codes.astype(np.int64).tobytes())
        h.update(np.ascontiguousarray(self.order).tobytes())
        for name in sorted(self.meta):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.meta[name]).tobytes())
        return h.hexdigest()

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description stored with the data (parquet schema metadata)."""
        return {
            "format_version": 1,
            "fs": self.fs,
            "channels": self.channels,
            "units": self.units,
            "modality": self.modality,
            "n_samples": self.n_samples,
            "subject_column": self.subject_name,
            "label_column": self.label_name,
            "order_columns": self.order_names,
            "meta_columns": list(self.meta),
            "class_names": self.class_names,
            "digest": self.digest,
        }
