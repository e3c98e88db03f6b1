"""The on-disk model format: one safetensors file, tensors plus a JSON header.

A bundle holds network weights and the reference table as tensors, and everything else
(schema, fitted transforms, training ranges, history, versions) as JSON in the file's
metadata. Reading it parses JSON and raw little-endian arrays only: no pickle, so a
crafted file cannot run code. A SHA-256 over the tensors and the JSON detects truncation
and tampering; a format version detects files from an incompatible normcore.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from normcore.errors import BundleError

FORMAT = "normcore-bundle"
FORMAT_VERSION = 6
"""2: denoisers predict v (format 1 predicted the noise, so its weights mean something else).
3: the deviation calibration. 4: the reference table holds normal scores, not user units,
and the first stage is a penalised-spline location-scale without a power transform."""
MAX_BUNDLE_BYTES = 512 * 1024**2


def _digest(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def to_bytes(tensors: dict[str, np.ndarray | torch.Tensor], meta: dict) -> bytes:
    """Serialise tensors and JSON-able metadata into one bundle."""
    ts = {
        k: torch.as_tensor(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v.contiguous()
        for k, v in tensors.items()
    }
    meta = {**meta, "format": FORMAT, "format_version": FORMAT_VERSION}
    meta_json = json.dumps(meta, sort_keys=True, allow_nan=True)
    return st_save(ts, metadata={"normcore": meta_json, "sha256": _digest(ts, meta_json)})


def _header(data: bytes) -> dict:
    if len(data) < 8:
        raise BundleError(
            "This is not a normcore model file: it is empty or only a few bytes long."
        )
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise BundleError(
            "This model file is truncated or is not a normcore model (its header is incomplete). "
            "Download or copy it again."
        )
    try:
        return json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(
            "This model file's header is not readable; it is not a normcore model."
        ) from err


def from_bytes(data: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    """Parse and verify a bundle; every failure is a BundleError with a plain reason."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(
            f"This model file is larger than the {MAX_BUNDLE_BYTES // 1024**2} MB limit."
        )
    data = bytes(data)
    header = _header(data)
    stored = header.get("__metadata__") or {}
    if "normcore" not in stored:
        raise BundleError(
            "This file is a safetensors file but not a normcore model (no normcore metadata)."
        )
    try:
        meta = json.loads(stored["normcore"])
    except json.JSONDecodeError as err:
        raise BundleError("This model file's metadata is damaged.") from err
    if meta.get("format") != FORMAT:
        raise BundleError("This file is not a normcore model bundle.")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"This model was saved in bundle format {version!r} "
            f"(normcore {meta.get('normcore_version', '?')}); this normcore reads format "
            f"{FORMAT_VERSION}. Re-fit the model or use a matching normcore version."
        )
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise BundleError(f"This model file is damaged or truncated: {err}") from err
    if _digest(tensors, stored["normcore"]) != stored.get("sha256"):
        raise BundleError(
            "This model file was modified after it was saved (its checksum does not match); "
            "it will not be loaded."
        )
    return tensors, meta


def write(path: str | os.PathLike, data: bytes) -> Path:
    """Write bundle bytes to `path` atomically (a crash never leaves half a model)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def read(path: str | os.PathLike) -> bytes:
    """Read bundle bytes from `path` with a clear error if it is not there."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"No model file at {path}.")
    if path.stat().st_size > MAX_BUNDLE_BYTES:
        raise BundleError(
            f"{path} is larger than the {MAX_BUNDLE_BYTES // 1024**2} MB model size limit."
        )
    return path.read_bytes()
