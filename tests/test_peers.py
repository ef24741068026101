"""A distributed job whose process dies, and one started by a cluster: what every other process does.

Real processes, real signals, real files. Two processes on 127.0.0.1 (gloo CPU collectives) train
with a checkpoint every 4 steps (``tests/peers_worker.py``); at step 8 one of them stops in its
callback, this test SIGKILLs it, and times the survivor from the signal to its exit: it must end
on its own, within 30 s, with exit code 1 and a ``BpjaxError`` naming the lost process and the
checkpoint of step 8 (not hang, not abort with a C++ trace), with or without the launcher, whether
the lost one is process 0 (where the job started) or not. Cluster detection runs in subprocesses
with faked SLURM and Open MPI variables: a cluster of one task is one process; a cluster of
several tasks starts the job as JAX places it, and a task left alone names what is missing
instead of training as an independent job.
"""

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import bpjax as bp
from bpjax import checkpoint
from bpjax.train import distributed
from bpjax.train.launch import free_port, launch, process_env

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "peers_worker.py")
CLUSTER_VARS = ("SLURM_", "OMPI_", "BPJAX_", "JAX_COORDINATOR", "KUBERNETES_SERVICE_HOST", "TPU_")


def _no_cluster(monkeypatch):
    for k in list(os.environ):
        if k.startswith(CLUSTER_VARS):
            monkeypatch.delenv(k)


def slurm(tasks: int, task: int, port: int) -> dict:
    """The variables ``srun -n tasks`` gives task ``task`` (JAX reads these five, and ``JAX_COORDINATOR_PORT``)."""
    return {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": str(tasks),
            "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task), "JAX_COORDINATOR_PORT": str(port)}


def open_mpi(tasks: int, rank: int, port: int) -> dict:
    """The variables ``mpirun -n tasks`` gives rank ``rank`` (the coordinator is the launcher's host)."""
    return {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://127.0.0.1:34911", "OMPI_COMM_WORLD_SIZE": str(tasks),
            "OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_LOCAL_RANK": str(rank),
            "JAX_COORDINATOR_PORT": str(port)}


def test_a_cluster_of_one_task_is_one_process(monkeypatch):
    _no_cluster(monkeypatch)
    assert bp.train.initialize() is False
    for env in (slurm(1, 0, 1), open_mpi(1, 0, 1)):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert bp.train.initialize() is False  # nothing started: jax is in use here, that would raise


@pytest.mark.parametrize("env,name", [(slurm(2, 1, 1), "SlurmCluster"), (open_mpi(3, 2, 1), "OmpiCluster")])
def test_a_cluster_of_several_tasks_is_never_run_as_independent_jobs(monkeypatch, env, name):
    # In this process jax is already in use, so the job cannot start here: initialize says so, and what
    # it found, instead of returning False (each task would train alone and write the same files).
    import jax

    jax.devices()  # jax in use (as in any test process): the check comes before any waiting
    _no_cluster(monkeypatch)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    count, task = (2, 1) if name == "SlurmCluster" else (3, 2)
    with pytest.raises(bp.BpjaxError, match=rf"according to JAX's cluster detection \({name}\), this is process "
                                            rf"{task} of {count} .* jax is already in use in this process"):
        bp.train.initialize()


@pytest.mark.slow  # about 10 s: 4 subprocesses; the two tests above cover the decision in this process
def test_a_faked_cluster_starts_the_job_or_names_what_is_missing(tmp_path):
    code = ("import bpjax as bp, sys\n"
            "try:\n"
            "    print(bp.train.initialize(initialization_timeout=3))\n"
            "    import jax; print(jax.process_index(), jax.process_count(), jax.device_count())\n"
            "except bp.BpjaxError as e:\n"
            "    print(e)\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_VARS)}
    base["JAX_PLATFORMS"] = "cpu"
    both, alone_1, alone_0 = free_port(), free_port(), free_port()
    envs = {"slurm task 0": slurm(2, 0, both), "slurm task 1": slurm(2, 1, both),
            "slurm task 1 alone": slurm(2, 1, alone_1), "mpi rank 0 alone": open_mpi(2, 0, alone_0)}
    procs = {k: subprocess.Popen([sys.executable, "-c", code], env={**base, **e}, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for k, e in envs.items()}
    out = {k: p.communicate(timeout=120)[0].strip().splitlines() for k, p in procs.items()}
    assert out["slurm task 0"][-2:] == ["True", "0 2 2"], out["slurm task 0"]
    assert out["slurm task 1"][-2:] == ["True", "1 2 2"], out["slurm task 1"]
    assert out["slurm task 1 alone"][-1] == (
        f"initialize: according to JAX's cluster detection (SlurmCluster), this is process 1 of 2 with the "
        f"coordinator at localhost:{alone_1}, but nothing answered at localhost:{alone_1} within 3 s: start all 2 "
        f"processes (process 0 starts the coordinator), or run one process without those settings")
    assert out["mpi rank 0 alone"][-1] == (
        f"initialize: according to JAX's cluster detection (OmpiCluster), this is process 0 of 2 with the "
        f"coordinator at 127.0.0.1:{alone_0}, but process 1 did not start within 3 s: start all 2 processes (under "
        f"SLURM with srun, under Open MPI with mpirun), or run one process without those settings")


def _expected(lost: int, path: str, stuck: bool = False) -> str:
    why = (r"the run here did not stop within 5 s of the loss: a collective with a lost process may never return, "
           r"so this process is ended" if stuck else r"here a collective failed: UNKNOWN: Gloo \w+ failed: [^\n]*")
    return (rf"bpjax\.errors\.BpjaxError: fit: process {lost} of 2 was lost \({why}\); the last checkpoint this run "
            rf"wrote is step 8 in {re.escape(repr(path))}: restart all 2 processes with the same fit\(\.\.\., "
            rf"checkpoint_path={re.escape(repr(path))}\) to resume from it")


def _kill_when_ready(out_dir, deadline_s=240) -> float:
    """SIGKILL the process that wrote ``victim_<pid>``; returns the time of the signal."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = [f for f in os.listdir(out_dir) if f.startswith("victim_")]
        if found:
            os.kill(int(found[0].split("_")[1]), signal.SIGKILL)
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError("the victim never reached step 8")


@pytest.mark.slow  # about 20 s each (start-up, then up to 10 s until the coordination service misses the heartbeat)
@pytest.mark.parametrize("victim,stuck", [(0, False), (1, True)], ids=["process_0_lost", "stuck_survivor"])
def test_a_survivor_names_the_lost_process_and_the_last_checkpoint(tmp_path, victim, stuck):
    port, survivor = free_port(), 1 - victim
    logs = [open(tmp_path / f"process_{i}.log", "w") for i in (0, 1)]
    argv = [sys.executable, WORKER, str(tmp_path), str(victim)] + (["stuck"] if stuck else [])
    procs = [subprocess.Popen(argv, stdout=logs[i], stderr=subprocess.STDOUT, env=process_env(i, 2, port, 1))
             for i in (0, 1)]
    try:
        killed = _kill_when_ready(tmp_path)
        code = procs[survivor].wait(timeout=120)
        took = time.monotonic() - killed
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for f in logs:
            f.close()
    log = (tmp_path / f"process_{survivor}.log").read_text()
    print(f"process {victim} lost{', the survivor stuck' if stuck else ''}: the survivor exited with code {code} "
          f"{took:.1f} s after the SIGKILL")
    path = str(tmp_path / "run")
    assert checkpoint.read_metadata(path)["metadata"]["step"] == 8  # the file holds the step the report names
    assert code == 1 and took < 30, (code, took, log[-3000:])
    assert re.search(_expected(victim, path, stuck) + r"\n$", log), log[-3000:]
    assert "Check failure" not in log and "Terminating process" not in log


@pytest.mark.slow  # about 20 s; the default suite checks the launcher's grace in test_multiprocess.py
def test_under_the_launcher_the_survivor_reports_before_it_is_stopped(tmp_path):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        job = pool.submit(launch, [WORKER, str(tmp_path), "0"], processes=2, cpu_devices=1, timeout=240,
                          log_dir=str(tmp_path))
        killed = _kill_when_ready(tmp_path)
        with pytest.raises(bp.BpjaxError) as e:
            job.result()
        took = time.monotonic() - killed
    message = str(e.value)
    print(f"under the launcher: it returned {took:.1f} s after the SIGKILL")
    # the launcher quotes both logs: the killed process's (nothing to say) and the survivor's report
    assert message.startswith("launch: process 0 of 2 exited with code -9 (exit codes [-9, 1]); the end of "
                              "process 0's log:"), message[:300]
    assert re.search("the end of process 1's log:\n(.|\n)*" + _expected(0, str(tmp_path / "run")) + "\n$",
                     message), message
    assert took < 30


def test_the_lost_process_report_says_where_the_run_resumes(monkeypatch):
    why = "here a collective failed: UNKNOWN: Gloo AllReduce failed: Connection closed by peer"
    monkeypatch.setattr(distributed._Run, "checkpoint", None)
    assert distributed._lost_message([3], 4, why, None) == (
        "process 3 of 4 was lost (here a collective failed: UNKNOWN: Gloo AllReduce failed: Connection closed by "
        "peer); this run wrote no checkpoint (checkpoint_path=None): a restart begins at step 0; pass "
        "checkpoint_path (and checkpoint_every) to fit to be able to resume")
    assert distributed._lost_message([1, 2], 4, why, "/runs/a").endswith(
        "processes 1, 2 of 4 were lost (here a collective failed: UNKNOWN: Gloo AllReduce failed: Connection "
        "closed by peer); this run wrote no checkpoint yet: restarting all 4 processes with the same fit(..., "
        "checkpoint_path='/runs/a') resumes from the newest one there, if any, else from step 0")
    monkeypatch.setattr(distributed._Run, "checkpoint", ("/runs/a", 60))
    assert distributed._lost_message([0], 2, why, "/runs/a").endswith(
        "; the last checkpoint this run wrote is step 60 in '/runs/a': restart all 2 processes with the same "
        "fit(..., checkpoint_path='/runs/a') to resume from it")
