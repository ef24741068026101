"""bpjax.train.driver: how a run is cut into compiled chunks (the chunks' own steps are tested in test_runs.py)."""

import pytest

import bpjax as bp
from bpjax.train.driver import STREAM_BLOCK_BYTES, chunk_bounds, chunking, default_chunk


def test_chunk_bounds_cut_at_chunks_and_checkpoints_from_the_start():
    assert chunk_bounds(0, 10, 4, None) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(0, 10, 4, 3) == [(0, 3), (3, 4), (4, 6), (6, 8), (8, 9), (9, 10)]
    assert chunk_bounds(5, 10, 4, None) == [(5, 8), (8, 10)]  # resumed at step 5: the same cuts after it
    assert chunk_bounds(10, 10, 4, None) == []


def test_default_chunk_is_the_run_when_silent_and_about_a_twentieth_with_a_bar():
    assert default_chunk(1000, verbose=False) == 1000
    assert default_chunk(1000, verbose=True) == 50
    assert default_chunk(1010, verbose=True) == 101  # a divisor of the steps near 1/20: one program for all chunks
    assert default_chunk(100, verbose=False, batch_bytes=STREAM_BLOCK_BYTES // 2) == 2  # streamed: blocks <= 16 MB


def test_chunking_checks_its_options_and_saves_after_every_chunk_by_default():
    assert chunking("fit", 100, 10, None, None, False) == (10, None)
    assert chunking("fit", 100, None, "run", None, False) == (100, 100)  # a path alone: a save after each chunk
    with pytest.raises(bp.BpjaxError, match=r"fit: checkpoint_every is set but checkpoint_path is None"):
        chunking("fit", 100, None, None, 5, False)
    with pytest.raises(bp.BpjaxError, match=r"fit: chunk_size must be a positive int, got 0"):
        chunking("fit", 100, 0, None, None, False)
