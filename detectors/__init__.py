"""driftline's numerical core: pure numpy/scipy, no I/O.

Change detectors (river-exact, batch-vectorized), two-sample drift statistics against
a reference, windowed performance metrics, and sequential tests.
"""

from detectors._base import ChangeDetector, Detection

__all__ = ["ChangeDetector", "Detection"]
