"""The garbage collector's pauses as a metric: every collection timed, by generation."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from axrisi import create_app, metrics
from axrisi.config import Settings


@pytest.fixture
def watching() -> Iterator[None]:
    """The hook installed for one test, and taken out after it (it is per process)."""
    installed = metrics.watch_gc()
    try:
        yield
    finally:
        if installed:
            gc.callbacks.remove(metrics.time_collection)
        metrics.record_gc_pauses()


def full_collections() -> tuple[float, float]:
    """The generation-2 series' count and sum, as this process's registry reports them."""
    labels = {"generation": "2"}
    count = REGISTRY.get_sample_value("axrisi_gc_pause_seconds_count", labels)
    total = REGISTRY.get_sample_value("axrisi_gc_pause_seconds_sum", labels)
    assert count is not None and total is not None, "the generation-2 series is missing"
    return count, total


def test_a_forced_full_collection_is_observed_in_the_generation_2_series(watching: None) -> None:
    """gc.collect(2) lands in axrisi_gc_pause_seconds{generation="2"} with its duration."""
    metrics.record_gc_pauses()
    count, total = full_collections()
    gc.collect(2)
    metrics.record_gc_pauses()
    count_after, total_after = full_collections()
    assert count_after >= count + 1
    assert total_after > total


def test_the_hook_is_registered_once_per_process(watching: None) -> None:
    """Watching again (a second app, a hook inherited through fork) adds no second hook."""
    assert metrics.watch_gc() is False
    assert gc.callbacks.count(metrics.time_collection) == 1


def test_a_scrape_records_the_pauses_noted_since_the_last(watching: None) -> None:
    """/metrics moves what the hook noted into the histogram before it renders."""
    app = create_app(Settings(env="development", jwt_secret_key="x" * 40))
    metrics.record_gc_pauses()
    count, _ = full_collections()
    gc.collect(2)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    line = next(line for line in text.splitlines()
                if line.startswith('axrisi_gc_pause_seconds_count{generation="2"}'))
    assert float(line.split()[-1]) >= count + 1


def test_a_collection_while_the_histogram_is_locked_does_not_wait_for_the_lock(
        watching: None) -> None:
    """Regression: a collection can start while prometheus-client holds a value's lock (not
    re-entrant); a hook that observed there would wait for it for ever."""
    series = metrics.GC_PAUSE.labels("2")
    lock = series._sum._lock  # the value's own lock (MutexValue, outside multiprocess mode)
    finished = threading.Event()

    def collect_holding_the_lock() -> None:
        with lock:
            gc.collect(2)
        finished.set()

    worker = threading.Thread(target=collect_holding_the_lock, daemon=True)
    worker.start()
    worker.join(10)
    assert finished.is_set(), "the collection waited for the histogram's lock"
