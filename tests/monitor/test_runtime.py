import gc
import warnings

from driftline.monitor.runtime import GC_THRESHOLDS, steady_gc


def _collect_earlier_tests_garbage() -> None:
    """Collect what earlier tests in this worker left for the collector first: kafka-python
    3.0 leaves the socket of a refused connection open (tests that reach no broker on
    purpose make some), and this test's own collections would otherwise report those
    sockets here, under pytest's ``error`` filter, as if this test had leaked them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def test_steady_gc_freezes_start_state_and_restores_the_collector():
    _collect_earlier_tests_garbage()
    before = gc.get_threshold()
    with steady_gc():
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 1000  # the objects alive at start: never scanned again
        cycle = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # cycles made meanwhile are still collected
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def _replay_files(tmp_path):
    from tests.monitor.streams import prediction_events, to_jsonl

    path = tmp_path / "p.jsonl"
    path.write_bytes(to_jsonl(prediction_events(300, seed=5)))
    return path


def test_the_service_leaves_the_garbage_collector_as_it_found_it(tmp_path):
    """Tuning the collector is the entry point's business (the CLI's), not the service's."""
    from driftline.app import Service
    from driftline.monitor.config import load_settings
    from driftline.monitor.sources import JsonlSource
    from driftline.sinks.deadletter import FileDeadLetters

    before = gc.get_threshold()
    seen = []
    settings = load_settings(prometheus={"enabled": False}, state_dir=tmp_path / "state")
    source = JsonlSource(
        _replay_files(tmp_path), None, predictions_topic="predictions", feedback_topic="feedback", batch_size=100
    )
    service = Service(
        settings,
        source=source,
        dead_letters=FileDeadLetters(tmp_path / "dead.jsonl"),
        checkpoint=False,
        on_batch=lambda stats: seen.append(gc.get_threshold()),
    )
    assert service.run() == 0
    assert len(seen) == 3 and set(seen) == {before}
    assert gc.get_threshold() == before


def test_the_cli_tunes_the_collector_for_its_run_and_restores_it(tmp_path, monkeypatch):
    from driftline.app import Service
    from driftline.cli import main

    before = gc.get_threshold()
    seen = []
    process = Service._process

    def recording(self, batch, source):
        seen.append((gc.get_threshold(), gc.get_freeze_count() > 0))
        return process(self, batch, source)

    monkeypatch.setattr(Service, "_process", recording)
    assert (
        main(
            [
                "replay",
                "--predictions",
                str(_replay_files(tmp_path)),
                "--alarms",
                str(tmp_path / "a.jsonl"),
                "--batch-size",
                "100",
                "--quiet",
            ]
        )
        == 0
    )
    assert seen and set(seen) == {(GC_THRESHOLDS, True)}
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
