"""Helpers for the privacy checks: plant recognisable values in a cohort, then look for them.

A planted value is searched for as text (CSV, JSON, logs), as UTF-16 text, and as the
float64/float32 bytes numpy, Parquet or a pickle would store, in every regular file
created or modified since the session started under the given directories.
"""

from __future__ import annotations

import os
import secrets
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from normcore.synthetic import SyntheticSpec, simulate

#: Files larger than this are not read (none of the app's own writes come near it).
MAX_SCAN_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Planted:
    """A cohort whose ids carry a random tag and whose first IDP holds a random value."""

    table: pd.DataFrame
    tag: str
    value: float

    def needles(self) -> list[bytes]:
        text = [self.tag, repr(self.value)]
        return [
            *(t.encode() for t in text),
            *(t.encode("utf-16-le") for t in text),
            struct.pack("<d", self.value),
            struct.pack("<f", self.value),
        ]


def planted_cohort(spec: SyntheticSpec, n: int, seed: int, label: str) -> Planted:
    """`n` synthetic people; ids '<label>-<random hex>-<i>', one IDP cell a random value."""
    tag = f"{label}-{secrets.token_hex(6)}"
    df = simulate(spec, n, seed=seed)
    df["subject_id"] = [f"{tag}-{i:04d}" for i in range(n)]
    idp = [c for c in df.columns if c.startswith("idp_")][0]
    value = round(float(df[idp].median()) + secrets.randbelow(10**9) * 1e-12, 12)
    df.loc[n // 2, idp] = value
    return Planted(df, tag, value)


def changed_files(roots: Iterable[Path], since: float) -> list[Path]:
    """Regular files under `roots` whose content or inode changed at or after `since`."""
    found = []
    for root in roots:
        if not root.exists():
            continue
        for directory, _, files in os.walk(root):
            for name in files:
                path = Path(directory) / name
                try:
                    info = path.lstat()
                except OSError:
                    continue
                if path.is_symlink() or max(info.st_mtime, info.st_ctime) < since:
                    continue
                found.append(path)
    return found


def files_holding(planted: Iterable[Planted], roots: Iterable[Path], since: float
                  ) -> list[tuple[Path, str]]:
    """(file, tag) for every changed file that contains any planted value."""
    needles = [(p.tag, n) for p in planted for n in p.needles()]
    hits = []
    for path in changed_files(roots, since):
        try:
            if path.stat().st_size > MAX_SCAN_BYTES:
                continue
            content = path.read_bytes()
        except OSError:
            continue
        hits += [(path, tag) for tag, needle in needles if needle in content]
    return sorted(set(hits))


def now() -> float:
    """A start time a little in the past, for filesystems with coarse timestamps."""
    return time.time() - 1.0
