"""driftline: a streaming drift monitor and retraining/rollback trigger for ML models.

The installed namespace (the repository's folders in brackets)::

    driftline               service assembly: Service (app), the CLI (cli)   [driftline/]
    driftline.demo          demo tooling: scenario, simulator, embedded broker [driftline/demo/]
    driftline.sinks         outputs: metrics, webhooks, alarm sinks, dead letters [sinks/]
    driftline.monitor       core vocabulary, pipeline (decode, join, engine), sources [monitor/]
    driftline.detectors     numerical core: detectors and statistics, no I/O [detectors/]

Each layer imports only the layers below it (tests/test_layers.py holds the rule).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("driftline")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
