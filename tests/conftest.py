"""Test-wide settings.

Tests use small tensors, for which one torch thread is faster than two and far faster
when the CPU is shared (OpenMP threads spin while waiting for a busy core).
"""

import os

os.environ.setdefault("NORMCORE_THREADS", "1")
