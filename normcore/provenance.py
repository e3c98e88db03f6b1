"""Where a model came from: its training table's digest, and signatures made with a key
the user holds (HMAC-SHA256).

The training table's SHA-256 (`table_digest`) lets whoever holds the table confirm a model
was fitted on it, without the model holding any of its rows.

A bundle's SHA-256 (normcore.bundle) is a checksum: anyone who edits a model file can
recompute it, so it proves a file is whole, not who made it. A signature can only be made
with the key: an HMAC-SHA256 (RFC 2104) over the bundle's content digest, under a secret
key file the user keeps. When a key is configured (`NORMCORE_BUNDLE_KEY` names the key
file, or the CLI's `--key`), every bundle normcore writes is signed with it and every
bundle it reads must carry a matching signature; without a key, signatures are kept but
not checked. The content digest covers every tensor and the whole JSON header, so a
signature over it covers the whole model.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import numpy as np
import pandas as pd

from normcore.errors import BundleError
from normcore.options import KEY_ENV
from normcore.schema import Schema, coerce_categories

MIN_KEY_BYTES = 16
"""128 bits: shorter keys can be guessed (NIST SP 800-107 asks for at least 112)."""
MAX_KEY_FILE_BYTES = 4096
_CONTEXT = b"normcore-bundle-signature-v1\0"
"""Prefixed to the signed digest so a key used elsewhere never signs a bundle by accident."""


def read_key(path: str | os.PathLike) -> bytes:
    """The key in a key file (its bytes, surrounding whitespace removed)."""
    path = Path(path)
    try:
        if not path.is_file():
            raise BundleError(f"There is no key file at '{path}'.")
        if path.stat().st_size > MAX_KEY_FILE_BYTES:
            raise BundleError(f"'{path}' is too large to be a normcore key file.")
        key = path.read_bytes().strip()
    except OSError as err:
        raise BundleError(f"The key file '{path}' cannot be read: {err.strerror}.") from err
    if len(key) < MIN_KEY_BYTES:
        raise BundleError(
            f"The key in '{path}' is {len(key)} bytes long; a key needs at least "
            f"{MIN_KEY_BYTES}. Make one with `normcore keygen`."
        )
    return key


def configured_key() -> bytes | None:
    """The key named by NORMCORE_BUNDLE_KEY, or None when it is unset or empty."""
    path = os.environ.get(KEY_ENV, "").strip()
    return read_key(path) if path else None


def new_key_text() -> str:
    """A fresh random 256-bit key, as the hex text a key file holds."""
    return secrets.token_hex(32) + "\n"


def signature(digest: str, key: bytes) -> str:
    """HMAC-SHA256 of a bundle's content digest under `key`, as hex."""
    return hmac.new(key, _CONTEXT + digest.encode("ascii"), hashlib.sha256).hexdigest()


def verify(digest: str, stored: object, key: bytes) -> None:
    """Refuse a bundle whose signature is missing or was not made with `key`."""
    if not isinstance(stored, str) or not stored:
        raise BundleError(
            "This model file is not signed, and a signing key is configured "
            f"({KEY_ENV} or --key): it will not be loaded. Sign a model you trust with "
            "`normcore sign MODEL --key KEYFILE`."
        )
    if not hmac.compare_digest(stored, signature(digest, key)):
        raise BundleError(
            "This model file's signature does not match the configured key: it was changed "
            "after it was signed, or signed with another key. It will not be loaded."
        )


def table_digest(df: pd.DataFrame, schema: Schema) -> str:
    """SHA-256 of the values a model was fitted on: the schema's columns, in its order,
    numbers as float64 and categories as their text. The same rows in the same order
    give the same digest whatever the file format they were read from."""
    h = hashlib.sha256()
    for column in (schema.age, *schema.categorical, *schema.idps):
        h.update(column.encode("utf-8") + b"\0")
        if column in schema.categorical:
            text = "\x1f".join(coerce_categories(df[column]).astype(str))
            h.update(text.encode("utf-8", "surrogatepass"))
        else:
            values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
            h.update(values.astype("<f8").tobytes())
    return h.hexdigest()
