import gc

from driftline.monitor.runtime import GC_THRESHOLDS, steady_gc


def test_steady_gc_freezes_start_state_and_restores_the_collector():
    before = gc.get_threshold()
    with steady_gc():
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 1000  # the objects alive at start: never scanned again
        cycle = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # cycles made meanwhile are still collected
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
