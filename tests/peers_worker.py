"""One process of the 2-process jobs of ``tests/test_peers.py``: a fit that one process never finishes.

    BPJAX_*=... python tests/peers_worker.py OUT_DIR VICTIM [stuck]

Both processes train with a checkpoint every 4 steps (``OUT_DIR/run``, written by process 0). At
step 8, after the checkpoint of step 8, process ``VICTIM`` writes ``OUT_DIR/victim_<pid>`` and
sleeps in its callback until the test SIGKILLs it; the other process goes on and waits in the next
collective for the dead one, which fails: its ``fit`` raises the ``BpjaxError`` that the test reads
from its stderr (nothing here catches it). With ``stuck``, the survivor sleeps in its callback too
(as a process whose collective never returns): the run cannot raise, and the process is ended.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

KILL_AT, EVERY = 8, 4


def main(out_dir: str, victim: int, stuck: bool) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import bpjax as bp

    assert bp.train.initialize() is True
    import jax
    import optax

    from bpjax.layers import Dense

    p, P = jax.process_index(), jax.process_count()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = (x[:, :2].argmax(1)).astype(np.int32)
    mesh = bp.train.data_parallel_mesh()
    data = bp.train.process_local((x[p * 32 // P:(p + 1) * 32 // P], y[p * 32 // P:(p + 1) * 32 // P]), mesh)
    model = Dense(2)
    _, params = model.init(jax.random.key(0), (4,))

    def stop_here(step, _):
        if step == KILL_AT and p == victim:
            open(os.path.join(out_dir, f"victim_{os.getpid()}"), "w").close()
            time.sleep(600)  # until SIGKILL
        if step == KILL_AT and stuck:
            time.sleep(600)  # until the process is ended

    bp.train.fit(model, bp.losses.softmax_cross_entropy, optax.sgd(0.1), params, data, steps=10 * KILL_AT,
                 batch_size=8, chunk_size=EVERY, checkpoint_path=os.path.join(out_dir, "run"),
                 checkpoint_every=EVERY, verbose=False, mesh=mesh, callback=bp.train.every_process(stop_here))
    raise AssertionError("the run went on without the victim")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["stuck"])
