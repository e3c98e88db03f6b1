"""The on-disk model format: one safetensors file, tensors plus a JSON header.

A bundle holds network weights, the reference table and the sampler's matrices as
tensors, and everything else (schema, first stage, training ranges, history, versions)
as JSON in the file's metadata; `pack` and `unpack` lay a model's parts out in it.
Reading it parses JSON and raw little-endian arrays only (safetensors' numpy reader): no
pickle, so a crafted file cannot run code, and no torch: the denoiser's weights stay numpy
arrays until something draws from the model (normcore.joint.StoredDenoiser), so reading a
model and scoring from its reference table never pay torch's seconds of start-up. A
SHA-256 over the tensors and the JSON (the model's fingerprint) detects truncation and
damage, but anyone who edits a file can recompute it: what a file means is checked on load
(normcore.bundle_checks), and a key the user holds can sign and verify bundles
(normcore.provenance). A format version detects files from an incompatible normcore.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from normcore import bundle_checks, provenance
from normcore.config import ModelConfig
from normcore.diffusion import Schedule
from normcore.errors import BundleError
from normcore.first_stage import FirstStage, NewPersonSpread
from normcore.joint import DenoiserSpec, JointModel, StoredDenoiser
from normcore.preprocessing import CovariateEncoder
from normcore.reference import DeviationCalibration, ReferenceTable
from normcore.safe_write import atomic_output
from normcore.schema import Schema

if TYPE_CHECKING:
    import torch

FORMAT = "normcore-bundle"
FORMAT_VERSION = 10
"""Raised whenever a stored field changes meaning or layout, so that an older or newer
file is refused with a plain message instead of being read as something else."""
READABLE_VERSIONS = (6, 7, 8, 9, FORMAT_VERSION)
"""Formats this normcore reads: 6 tabled every combination with an unknown level, which
`ReferenceTable.from_arrays` still reads as it is (7 stores the people per combination
and reads an unknown sex as a mixture; 8 stores the first stage's shape table as a
binary tensor, `SHAPE_TENSOR`, instead of JSON text; 9 changed the SAINT network's
default sizes and let IDPs share its tokens, which files before it read as
`SAINT_SIZES_BEFORE_9`; 10 gave the FiLM network's observed scores and noisy values
separate input channels, which files before it read as `FILM_SIZES_BEFORE_10`)."""
SAINT_SIZES_BEFORE_9 = {"width": 32, "depth": 2, "heads": 4, "ffn": 4, "idps_per_token": 1}
"""The SAINT network's default sizes before format 9 (config.SAINT_SIZES now)."""
FILM_SIZES_BEFORE_10 = {"split_observed": 0}
"""The FiLM network's input layout before format 10 (denoisers.film_mlp.FiLMMLP)."""
SHAPE_TENSOR = "first_stage.shape_quantiles"
"""The AgeShape quantile table (ages, z-levels, IDPs): the first stage's one large array,
stored as float64 so that it reads back bit for bit."""
MAX_BUNDLE_BYTES = 512 * 1024**2


def _digest(tensors: dict[str, np.ndarray], meta_json: str) -> str:
    """SHA-256 over the JSON, then each tensor's name, type, shape and bytes in name order.
    Types are named as torch names them ('torch.float32'), as in every file written since
    format 6, so that those files keep verifying."""
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|torch.{array.dtype.name}|{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def to_bytes(tensors: dict[str, np.ndarray], meta: dict) -> bytes:
    """Serialise arrays (or anything numpy reads as one) and JSON-able metadata into one
    bundle."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    meta = {**meta, "format": FORMAT, "format_version": FORMAT_VERSION}
    meta_json = json.dumps(meta, sort_keys=True, allow_nan=True)
    return _save(arrays, meta_json, _digest(arrays, meta_json), provenance.configured_key())


def _save(tensors: dict[str, np.ndarray], meta_json: str, digest: str, key: bytes | None) -> bytes:
    """The safetensors file: tensors, the JSON, its digest and, with a key, its signature."""
    stored = {"normcore": meta_json, "sha256": digest}
    if key is not None:
        stored["hmac_sha256"] = provenance.signature(digest, key)
    return st_save(tensors, metadata=stored)


def sign(data: bytes, key: bytes) -> bytes:
    """The bundle `data`, checked whole and meaningful, signed with `key` (any previous
    signature replaced). Sign only models whose origin you trust: a signature says the
    key holder vouches for the file, not that the file is right."""
    tensors, meta, stored = _verified(data, key=None)
    saved = _rebuild(tensors, meta, "cpu")
    saved.joint.denoiser.build("cpu")  # the network's weights are checked as it is built
    return _save(tensors, stored["normcore"], stored["sha256"], key)


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
    header = bundle_checks.parse_json(data[8 : 8 + n], "the file's header")
    stored = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(stored, dict) or not isinstance(stored.get("normcore"), str):
        raise BundleError(
            "This file is a safetensors file but not a normcore model (no normcore metadata)."
        )
    return stored


class Origin(NamedTuple):
    """Where a bundle came from, as its header says: what `normcore info` and the model
    card show, for comparison with what the model's provider published."""

    fingerprint: str
    """SHA-256 over every tensor and the whole JSON header: changes with any edit."""
    normcore_version: str
    created: str
    signature: str
    """'verified' (with the configured key), 'not verified' (signed; no key configured)
    or 'unsigned'."""

    @property
    def signature_text(self) -> str:
        """The signature state in words."""
        return {
            "verified": "signed, verified with the configured key",
            "not verified": "signed; not verified (no key configured: --key or "
            f"{provenance.KEY_ENV})",
            "unsigned": "not signed",
        }[self.signature]


def from_bytes(data: bytes) -> tuple[dict[str, np.ndarray], dict]:
    """Parse and verify a bundle; every failure is a BundleError with a plain reason."""
    tensors, meta, _ = _verified(data, provenance.configured_key())
    return tensors, meta


def origin(data: bytes, key: bytes | None = None) -> Origin:
    """The fingerprint, version, date and signature state of a bundle, verified with `key`
    (the configured key when None)."""
    key = key or provenance.configured_key()
    _, meta, stored = _verified(data, key)
    return _origin(meta, stored, key)


def _origin(meta: dict, stored: dict[str, str], key: bytes | None) -> Origin:
    """The `Origin` of a bundle verified with `key`, from its JSON and stored metadata."""
    signed = "hmac_sha256" in stored
    state = "unsigned" if not signed else "not verified"
    if signed and key is not None:
        state = "verified"
    return Origin(stored["sha256"], str(meta["normcore_version"]), str(meta["created"]), state)


def _verified(data: bytes, key: bytes | None) -> tuple[dict[str, np.ndarray], dict, dict[str, str]]:
    """Tensors, the normcore JSON and the stored metadata of a whole, checksummed bundle
    in this normcore's format, its signature checked when `key` is given."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(
            f"This model file is larger than the {MAX_BUNDLE_BYTES // 1024**2} MB limit."
        )
    data = bytes(data)
    stored = _header(data)
    meta = bundle_checks.parse_json(stored["normcore"], "the model's header")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError("This file is not a normcore model bundle.")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise BundleError(
            f"This model was saved in bundle format {version!r} "
            f"(normcore {meta.get('normcore_version', '?')}); this normcore reads formats "
            f"{', '.join(map(str, READABLE_VERSIONS))}. Re-fit the model or use a matching "
            "normcore version."
        )
    try:
        # Copies: the reader's arrays are read-only views of the file's bytes.
        tensors = {name: array.copy() for name, array in st_load(data).items()}
    except (SafetensorError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise BundleError(f"This model file is damaged or truncated: {err}") from err
    if _digest(tensors, stored["normcore"]) != stored.get("sha256"):
        raise BundleError(
            "This model file was modified after it was saved (its checksum does not match); "
            "it will not be loaded."
        )
    if key is not None:
        provenance.verify(stored["sha256"], stored.get("hmac_sha256"), key)
    return tensors, meta, stored


def write(path: str | os.PathLike, data: bytes) -> Path:
    """Write bundle bytes to `path` atomically: a crash never leaves half a model, two
    writers never share a temporary file, and a non-regular file is never replaced."""
    path = Path(path)
    with atomic_output(path) as f:
        f.write(data)
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


@dataclass
class SavedModel:
    """Every fitted part of a NormativeModel, as the bundle stores it; the model holds
    each field but the first two as its learned attribute of the same name plus `_`."""

    version: str
    config: ModelConfig
    created: str
    schema: Schema
    encoder: CovariateEncoder
    first_stage: FirstStage
    joint: JointModel
    reference: ReferenceTable
    deviation_calibration: DeviationCalibration
    training: dict
    history: list[dict]
    adaptations: list[dict]
    train_seconds: float
    fit_seconds: float

    @classmethod
    def fitted_fields(cls) -> list[str]:
        return [f.name for f in fields(cls)][2:]


def pack(model: SavedModel) -> bytes:
    """A fitted model as one bundle: network weights, the reference table and the
    sampler's matrices as tensors; everything else as JSON."""
    joint = model.joint
    tensors = {f"net.{k}": v for k, v in joint.weights().items()}
    tensors.update(model.reference.to_arrays())
    tensors["sampler.x0_cov"] = joint.x0_cov
    tensors["sampler.moment_map"] = np.asarray(joint.moment_map[0], dtype=np.float64)
    stage = model.first_stage.to_dict()
    tensors[SHAPE_TENSOR] = np.asarray(stage["shape"].pop("quantiles"), dtype=np.float64)
    meta = {
        "normcore_version": model.version,
        "created": model.created,
        "config": model.config.to_dict(),
        "schema": model.schema.to_dict(),
        **stage,
        "encoder": model.encoder.to_dict(),
        "training": model.training,
        "history": model.history,
        "train_seconds": model.train_seconds,
        "fit_seconds": model.fit_seconds,
        "reference_bandwidth": model.reference.bandwidth,
        "moment_map_offset": joint.moment_map[1].tolist(),
        "predictive": joint.spread.to_dict(),
        "deviation_calibration": model.deviation_calibration.to_list(),
        "adaptations": model.adaptations,
    }
    sites = model.deviation_calibration.sites_to_dict()
    if sites is not None:  # files of models without site shifts stay as they were
        meta["deviation_site_shifts"] = sites
    return to_bytes(tensors, meta)


def unpack(data: bytes, device: str | torch.device = "auto") -> tuple[SavedModel, Origin]:
    """Rebuild every part of a model from bundle bytes, and where it came from; any
    inconsistency is a BundleError. Never unpickles anything. The network is built on
    `device` when something first draws from the model (`JointModel.net`), and its
    weights are checked then."""
    key = provenance.configured_key()
    tensors, meta, stored = _verified(data, key)
    return _rebuild(tensors, meta, device), _origin(meta, stored, key)


def _first_stage_fields(tensors: dict[str, np.ndarray], meta: dict) -> dict:
    """The first stage's JSON fields, with the shape table from its tensor (format 8) or
    from the JSON itself (older formats)."""
    fields_ = {key: meta[key] for key in ("transform", "location_scale", "shape")}
    if SHAPE_TENSOR in tensors:
        fields_["shape"] = {**meta["shape"], "quantiles": tensors[SHAPE_TENSOR].astype(np.float64)}
    return fields_


def _with_sizes_of_its_time(meta: dict) -> dict:
    """The header with the network sizes its file was written with: a network saved
    before the format that changed its backbone's defaults, without sizes of its own,
    had that time's (SAINT before 9, FiLM before 10). Anything that is not what a header
    holds is left as it is for the checks to refuse."""
    config, version = meta.get("config"), meta.get("format_version", FORMAT_VERSION)
    if not isinstance(config, dict) or not isinstance(config.get("network", {}), dict):
        return meta
    then = {"saint": (9, SAINT_SIZES_BEFORE_9), "film": (10, FILM_SIZES_BEFORE_10)}
    changed, sizes = then.get(config.get("backbone"), (0, {}))
    if not isinstance(version, int) or version >= changed:
        return meta
    network = {**sizes, **config.get("network", {})}
    return {**meta, "config": {**config, "network": network}}


def _rebuild(tensors: dict[str, np.ndarray], meta: dict, device: str | torch.device) -> SavedModel:
    """The model's parts from a verified bundle's tensors and JSON. The header's types and
    sizes are checked before anything is built from them and the numbers' meaning at the
    end; the network's weights are checked against its settings when it is built."""
    meta = _with_sizes_of_its_time(meta)
    bundle_checks.check_header(meta)
    try:
        config = ModelConfig.from_dict(meta["config"])
        schema = Schema.from_dict(meta["schema"])
        encoder = CovariateEncoder.from_dict(meta["encoder"])
        bundle_checks.check_tensors(tensors, encoder.n_levels)
        spec = DenoiserSpec.of(config, len(schema.idps), encoder.n_levels)
        weights = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        joint = JointModel(
            denoiser=StoredDenoiser(spec, weights),
            schedule=Schedule(config.schedule, config.diffusion_steps),
            sampling_steps=config.sampling_steps,
            eta=config.eta,
            x0_cov=tensors["sampler.x0_cov"].astype(np.float32),
            moment_map=(
                tensors["sampler.moment_map"].astype(np.float64),
                np.asarray(meta["moment_map_offset"], dtype=np.float64),
            ),
            spread=NewPersonSpread.from_dict(meta["predictive"]),
            device=device,
            seed=config.seed,
        )
        arrays = {k: v for k, v in tensors.items() if k.startswith("reference.")}
        model = SavedModel(
            version=meta["normcore_version"],
            created=meta["created"],
            config=config,
            schema=schema,
            encoder=encoder,
            first_stage=FirstStage.from_dict(_first_stage_fields(tensors, meta)),
            joint=joint,
            reference=ReferenceTable.from_arrays(
                arrays, encoder.n_levels, meta["reference_bandwidth"]
            ),
            deviation_calibration=DeviationCalibration.from_list(
                meta["deviation_calibration"], meta.get("deviation_site_shifts")
            ),
            training=meta["training"],
            history=meta["history"],
            adaptations=list(meta.get("adaptations", [])),
            train_seconds=float(meta["train_seconds"]),
            fit_seconds=float(meta["fit_seconds"]),
        )
        bundle_checks.check_parts(
            schema, encoder, model.first_stage, model.reference, joint.spread, model.training,
            joint.moment_map[1],
        )  # fmt: skip
        _check_shapes(model)
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, OverflowError) as err:
        raise BundleError(f"This model file is inconsistent and cannot be used: {err}") from err
    return model


def _check_shapes(model: SavedModel) -> None:
    """Reject bundles whose pieces disagree (e.g. a table built for other IDPs)."""
    ref, d = model.reference, len(model.schema.idps)
    n_levels = model.encoder.n_levels
    n_combo = int(np.prod(n_levels)) if n_levels else 1
    if ref.quantiles.ndim != 4 or ref.quantiles.shape[0] != n_combo or ref.quantiles.shape[3] != d:
        raise BundleError(
            f"This model file is inconsistent: its reference table has shape {ref.quantiles.shape} "
            f"but the model has {n_combo} covariate combinations and {d} IDPs."
        )
    joint = model.joint
    if (
        ref.precision.shape[-2:] != (d, d)
        or model.first_stage.n_idps != d
        or joint.moment_map[0].shape != (d, d)
        or tuple(joint.x0_cov.shape) != (len(joint.timesteps), d, d)
    ):
        raise BundleError(
            "This model file is inconsistent: its IDP transforms do not match its IDPs."
        )
