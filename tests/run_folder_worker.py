"""A training run driven over stdin, for the run-folder tests (tests/test_run_folder.py).

    python tests/run_folder_worker.py FOLDER

It trains :func:`problem`'s model with ``fit(..., checkpoint_path=FOLDER, checkpoint_every=5)`` for 20
steps. Its callback reports ``at <step>`` after the save of step 5 and waits for a line on stdin; the
save of step 10 reports ``inside <temporary file>`` between its fsync and its rename and waits again
(the test SIGKILLs it there). Lines go to stdout, unbuffered.
"""

import os
import sys

import numpy as np

STEPS, EVERY, BATCH = 20, 5, 16


def problem():
    """``(model, loss, optimizer, params, (x, y), kwargs)`` of the run, the same in every process."""
    import jax
    import optax

    import bpjax as bp

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 3))).argmax(-1).astype(np.int32)
    model = bp.serial(bp.layers.Dense(8), bp.layers.Tanh(), bp.layers.Dense(3))
    _, params = model.init(jax.random.key(0), (5,))
    kw = dict(steps=STEPS, batch_size=BATCH, key=jax.random.key(1), shuffle=True, verbose=False)
    return model, bp.losses.softmax_cross_entropy, optax.adam(1e-2), params, (x, y), kw


def report(line: str) -> None:
    os.write(1, (line + "\n").encode())


def main(folder: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import bpjax as bp

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):  # hold the save of step 10 after its fsync, before its rename
        if os.path.basename(dst) == "step_00000010.npz":
            report(f"inside {src}")
            sys.stdin.readline()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace  # in this process only

    def callback(step, result):
        if step == EVERY:
            report(f"at {step}")
            sys.stdin.readline()

    model, loss, opt, params, data, kw = problem()
    bp.train.fit(model, loss, opt, params, data, checkpoint_path=folder, checkpoint_every=EVERY, callback=callback,
                 **kw)
    report("done")


if __name__ == "__main__":
    main(sys.argv[1])
