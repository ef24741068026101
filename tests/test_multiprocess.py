"""Two processes x two CPU devices on 127.0.0.1 (gloo collectives) train exactly as one process on one device.

``bp.train.launch`` starts ``tests/multiprocess_worker.py`` twice (free port, timeout, one log per
process); meanwhile this process runs the same :func:`run` on its one device with the whole
arrays. Compared: params and history of a shuffled fit with evaluation, the NaN guard's step,
params and message, a fit stopped by its callback and resumed from a checkpoint only process 0 can
see, ``make_step`` on split batches, a streamed fit, and the finite-input reports; and who did
what: process 0 alone wrote the checkpoint, showed the bar and ran the plain callback.

Tolerance (f32): each device sums its 4 rows of a batch's gradient and the all-reduce adds the 4
partial sums, another summation order than one 16-row sum (about 1e-7 relative per sum); over 10
Adam steps it stays below 1e-5 relative and 1e-6 absolute. The two processes hold replicas of one
computation, so they agree exactly.
"""

import concurrent.futures
import importlib.util
import os

import numpy as np
import pytest

import bpjax as bp
from bpjax.train.launch import launch

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_worker.py")
RTOL, ATOL = 1e-5, 1e-6
PER_PROCESS = {"shuffle/callback_steps", "resume/stop", "resume/saves", "resume/files"}


def _worker():
    spec = importlib.util.spec_from_file_location("multiprocess_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_processes_fit_with_a_guard_and_resume_as_one_device(tmp_path):
    """The default suite's share: runs 1 to 3 of the job (a shuffled fit with evaluation, the NaN guard, a stop
    and a resume from process 0's checkpoint: one compiled program); the slow test below runs all six."""
    _two_processes_as_one_device(tmp_path, quick=True)


@pytest.mark.slow
def test_two_processes_train_as_one_device(tmp_path):
    _two_processes_as_one_device(tmp_path, quick=False)


def _two_processes_as_one_device(tmp_path, quick):
    worker = _worker()
    os.makedirs(tmp_path / "single")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        job = pool.submit(launch, [WORKER, str(tmp_path), *(["quick"] if quick else [])], processes=2,
                          cpu_devices=2, timeout=300, log_dir=str(tmp_path))
        ref = worker.run(None, str(tmp_path / "single"), quick)
        assert job.result() == [0, 0]
    procs = [dict(np.load(tmp_path / f"result_{i}.npz")) for i in (0, 1)]
    assert procs[0]["devices"] == 4

    worst = (0.0, 0.0)  # the largest difference from one device and its fraction of the tolerance, for the record
    for key, want in ref.items():
        if key in PER_PROCESS:
            continue
        for p, got in enumerate(procs):
            if want.dtype.kind == "U":  # the same reports, word for word
                assert str(got[key]) == str(want), (key, p, got[key], want)
            else:
                np.testing.assert_allclose(got[key], want, rtol=RTOL, atol=ATOL, err_msg=f"{key} process {p}")
                diff = np.abs(got[key].astype(np.float64) - want)
                worst = (max(worst[0], float(diff.max(initial=0))),
                         max(worst[1], float((diff / (ATOL + RTOL * np.abs(want))).max(initial=0))))
        np.testing.assert_array_equal(procs[0][key], procs[1][key], err_msg=key)
    print(f"2 processes x 2 devices vs 1 device: max abs diff {worst[0]:.2e}, {worst[1]:.2f} of the tolerance")

    # the runs did what they claim
    assert ref["shuffle/eval_loss"][-1] < ref["shuffle/eval_loss"][0]
    assert ref["nan/step"] >= 1 and "non-finite loss at step" in str(ref["nan/message"])
    # process 0 alone: the plain callback, the bar, the checkpoint (written 3 times, at steps 3, 6, 9)
    np.testing.assert_array_equal(procs[0]["shuffle/callback_steps"], [3, 6, 9])
    assert procs[1]["shuffle/callback_steps"].size == 0
    logs = [(tmp_path / f"process_{i}.log").read_text() for i in (0, 1)]
    assert "fit serial" in logs[0] and "fit serial" not in logs[1]
    assert (int(procs[0]["resume/saves"]), int(procs[1]["resume/saves"])) == (3, 0)
    assert list(procs[0]["resume/files"]) == ["run"] and list(procs[1]["resume/files"]) == [""]
    # the stop: process 0 raised the callback's exception, process 1 was told; both resumed at step 6
    assert str(procs[0]["resume/stop"]) == "Stop: stopped at step 6"
    assert "the callback at step 6 raised in process 0" in str(procs[1]["resume/stop"])
    assert int(procs[0]["resume/start"]) == int(procs[1]["resume/start"]) == 6
    if quick:
        return
    assert "example 70" in str(ref["finite/message"]) and "step 7" in str(ref["stream/nan_message"])
    # an every_process callback ran in both
    np.testing.assert_array_equal(procs[1]["stream/callback_steps"], [5, 10])


def test_launch_sets_the_variables_and_stops_every_process_when_one_fails(tmp_path):
    # Process 1 fails only once process 0 has written its line (a file says so): without that handshake a
    # loaded machine can start process 0 after process 1 has failed, and the launcher stops it before it prints.
    script, ready = tmp_path / "job.py", tmp_path / "process_0_printed"
    script.write_text(
        "import os, sys, time\n"
        "keys = ('BPJAX_COORDINATOR_ADDRESS', 'BPJAX_NUM_PROCESSES', 'BPJAX_PROCESS_ID', 'XLA_FLAGS')\n"
        "print(*[os.environ[k] for k in keys], sep='|', flush=True)\n"
        "if os.environ['BPJAX_PROCESS_ID'] == '0':\n"
        f"    open({str(ready)!r}, 'w').close()\n"
        "    time.sleep(120)\n"
        f"while not os.path.exists({str(ready)!r}):\n"
        "    time.sleep(0.01)\n"
        "sys.exit(3)\n")
    # process 0 would sleep on: once the grace for its own report is over, the launcher stops it
    with pytest.raises(bp.BpjaxError, match=r"process 1 of 2 exited with code 3 \(exit codes \[-9, 3\], stopped by "
                                            r"the launcher: \[0\]\); the end of process 1's log"):
        launch([str(script)], processes=2, cpu_devices=3, timeout=100, log_dir=str(tmp_path), grace=0.2)
    lines = [(tmp_path / f"process_{i}.log").read_text().split("|") for i in (0, 1)]
    assert lines[0][0] == lines[1][0] and lines[0][0].startswith("127.0.0.1:")
    assert [ln[1:3] for ln in lines] == [["2", "0"], ["2", "1"]]
    assert "--xla_force_host_platform_device_count=3" in lines[0][3]
    (tmp_path / "sleep.py").write_text("import time; time.sleep(120)")
    with pytest.raises(bp.BpjaxError, match="the job ran past the timeout of 1"):  # both killed, not waited for
        launch([str(tmp_path / "sleep.py")], processes=2, timeout=1)


def test_initialize_alone_is_one_process_and_half_a_configuration_is_refused(monkeypatch):
    for k in ("BPJAX_COORDINATOR_ADDRESS", "BPJAX_NUM_PROCESSES", "BPJAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert bp.train.initialize() is False  # a script run without the launcher: nothing to start
    monkeypatch.setenv("BPJAX_NUM_PROCESSES", "2")
    with pytest.raises(bp.BpjaxError, match=r"together, got none for \['BPJAX_COORDINATOR_ADDRESS', "
                                            r"'BPJAX_PROCESS_ID'\]"):
        bp.train.initialize()
    with pytest.raises(bp.BpjaxError, match=r"process_id must lie in \[0, 2\), got 5"):
        bp.train.initialize("127.0.0.1:1", process_id=5)
