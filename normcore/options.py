"""The choices and defaults the command line offers, in a module that imports nothing.

The CLI builds its whole parser, and answers `--help`, from this module alone, so a user
asking for help or mistyping a flag does not wait for torch, pandas and scipy to load.
The modules that act on these values (the denoisers, the device rule, the metrics, the
signatures) import them from here: one list each, read by the parser and the code alike.
"""

from __future__ import annotations

BACKBONES = ("film", "saint")
"""Names accepted by `normcore.denoisers.build_denoiser`; the first is the default."""

DEVICES = ("auto", "cpu", "cuda")
"""Where the network may run (`normcore.device.resolve_device`)."""

DEFAULT_QUANTILES: tuple[float, ...] = (0.02, 0.25, 0.5, 0.75, 0.98)
"""Probability levels of the default centile curves and calibration tables: the 2nd and
98th centiles bound a growth chart's usual normal range (about +-2 SD), with the
quartiles and median inside it. The model, the CLI and the reports use this one tuple."""

KEY_ENV = "NORMCORE_BUNDLE_KEY"
"""Environment variable naming the key file whose key signs and verifies bundles
(`normcore.provenance`)."""
