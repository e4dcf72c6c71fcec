"""The dependency rule: layers import only the layers below them.

    4  assembly     driftline.app, driftline.cli, driftline.*_cli, driftline.demo.*
    3  edges        sources (driftline.monitor: Kafka and file sources, the changelog store,
                    checkpoints) and sinks (driftline.sinks.*); neither imports the other
    2  pipeline     decoding, schema, join, engine, references (driftline.monitor)
    1  vocabulary   alarms, snapshots, the telemetry protocol, errors, configuration types
                    (driftline.monitor), no I/O
    0  numerics     driftline.detectors: numpy and scipy only

Every import counts, including those inside functions. A module missing from the table
fails the test: a new module is placed in a layer on purpose.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "driftline": "driftline",
    "monitor": "driftline.monitor",
    "detectors": "driftline.detectors",
    "sinks": "driftline.sinks",
}

VOCABULARY = {"alarms", "snapshot", "telemetry", "exceptions", "config", "logs", "runtime", "kafka_client"}
PIPELINE = {
    "decode",
    "contract",
    "schema",
    "join",
    "engine",
    "reference",
    "encoding",
    "checks",
    "canary",
    "edges",
    "lifecycle",
    "quality",
    "performance",
    "drift",
    "versions",
    "estimation",
    "segments",
}
SOURCES = {"sources", "confluent_source", "kafka_records", "changelog", "checkpoint", "consumer", "messages", "state"}


def layer_of(module: str) -> tuple[int, str]:
    """(layer, side) of a driftline module; side tells sources and sinks apart in layer 3."""
    parts = module.split(".")
    if parts[:2] == ["driftline", "detectors"]:
        return 0, ""
    if parts[:2] == ["driftline", "sinks"]:
        return 3, "sinks"
    if parts[:2] == ["driftline", "monitor"]:
        name = parts[2] if len(parts) > 2 else "__init__"
        if name in VOCABULARY or name == "__init__":
            return 1, ""
        if name in PIPELINE:
            return 2, ""
        if name in SOURCES:
            return 3, "sources"
        raise LookupError(f"{module} is in no layer: add it to tests/test_layers.py")
    if parts[0] == "driftline":
        return (4, "") if len(parts) > 1 else (1, "")  # driftline/__init__ holds the version only
    raise LookupError(module)


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imports_of(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return out


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The driftline module an import name refers to (the longest known prefix)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in known:
            return candidate
    return None


def test_every_module_is_in_a_layer():
    unplaced = []
    for module in modules():
        try:
            layer_of(module)
        except LookupError as exc:
            unplaced.append(str(exc))
    assert not unplaced, "\n".join(unplaced)


def test_layers_import_only_downwards():
    known = modules()
    violations = set()
    for module, path in known.items():
        layer, side = layer_of(module)
        for name in imports_of(path, module):
            if name.split(".")[0] in {"monitor", "detectors", "sinks"}:
                violations.add(f"{module} imports {name}: import driftline.{name}")
                continue
            target = resolve(name, known)
            if target is None or target == module or module.startswith(target + "."):
                continue  # third-party, or the module's own package
            t_layer, t_side = layer_of(target)
            if t_layer > layer or (t_layer == layer == 3 and t_side != side):
                violations.add(
                    f"{module} (layer {layer}{' ' + side if side else ''}) imports {target} "
                    f"(layer {t_layer}{' ' + t_side if t_side else ''})"
                )
    assert not violations, "\n".join(sorted(violations))


@pytest.mark.parametrize(
    "package,forbidden",
    [
        ("driftline.detectors", ["kafka", "httpx", "prometheus_client", "pydantic", "msgspec", "sqlite3"]),
        ("driftline.monitor.engine", ["kafka", "httpx", "prometheus_client", "sqlite3"]),
        ("driftline.sinks", ["kafka", "httpx", "prometheus_client", "sqlite3"]),
    ],
)
def test_importing_a_layer_loads_no_io_library(package, forbidden):
    """The numerics and the pipeline load no client library; the sinks package loads
    nothing until a sink is imported (loading one sink must not load them all)."""
    code = f"import sys, {package}; print(' '.join(m for m in {forbidden!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"importing {package} loaded {done.stdout.strip()}"
