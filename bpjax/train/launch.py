"""Start ``N`` processes of one training script on this machine, wired for ``bp.train.initialize()``.

    python -m bpjax.train.launch --processes 2 --cpu-devices 2 [--timeout 600] [--grace 30] train.py [args ...]

Each process gets ``BPJAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>``, ``BPJAX_NUM_PROCESSES`` and
``BPJAX_PROCESS_ID``; with ``--cpu-devices n`` also ``JAX_PLATFORMS=cpu`` and
``XLA_FLAGS=--xla_force_host_platform_device_count=n`` (``n`` CPU devices each, gloo collectives
between the processes). When one process fails, the others are given ``--grace`` seconds to stop
on their own (a survivor of a lost process reports it, with the run's last checkpoint, within
about ``LOST_WAIT_S``), then stopped, since they would wait in their next collective. On several
hosts, start the script once per host yourself with the coordinator address of host 0 and that
host's process id, or under SLURM, Open MPI or Kubernetes let ``bp.train.initialize()`` detect them.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from bpjax import errors
from bpjax.train.distributed import LOST_WAIT_S

__all__ = ["free_port", "launch"]

GRACE_S = 2 * LOST_WAIT_S  # after one process fails, how long the others have to stop (and report) on their own


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_env(process_id: int, num_processes: int, port: int, cpu_devices: Optional[int],
                env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of process ``process_id``: the ``BPJAX_*`` variables (and the CPU device count)."""
    out = dict(os.environ if env is None else env)
    out.update(BPJAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", BPJAX_NUM_PROCESSES=str(num_processes),
               BPJAX_PROCESS_ID=str(process_id))
    if cpu_devices is not None:
        flags = [f for f in out.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform")]
        out["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={cpu_devices}"])
        out["JAX_PLATFORMS"] = "cpu"
    return out


def launch(argv: Sequence[str], *, processes: int, cpu_devices: Optional[int] = None,
           timeout: Optional[float] = None, log_dir: Optional[str] = None,
           env: Optional[Dict[str, str]] = None, grace: float = GRACE_S) -> List[int]:
    """Run ``python argv...`` as ``processes`` processes of one distributed job; returns their exit codes (all 0).

    Args:
      argv: the script and its arguments (``["train.py", "--steps", "100"]``).
      processes: how many processes; process ``i`` gets ``BPJAX_PROCESS_ID=i``.
      cpu_devices: CPU devices per process (``None``: leave the platform alone, e.g. one GPU each).
      timeout: seconds for the whole job; past it every process is killed.
      log_dir: write process ``i``'s stdout and stderr to ``<log_dir>/process_<i>.log`` (else inherited).
      env: the base environment (default ``os.environ``).
      grace: once a process has failed, seconds the others have to stop on their own before they are killed.

    Raises:
      BpjaxError: a process exited with a non-zero code or the job ran past ``timeout``; it names the
        process, and with ``log_dir`` quotes the end of the log of every process that failed.
    """
    processes = errors.positive_int("launch", "processes", processes)
    port = free_port()
    logs = [open(os.path.join(log_dir, f"process_{i}.log"), "w") if log_dir else None for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, *argv], env=process_env(i, processes, port, cpu_devices, env),
                              stdout=logs[i], stderr=subprocess.STDOUT if logs[i] else None)
             for i in range(processes)]
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    failed, why, stopped = None, "", []
    try:
        while [p.poll() for p in procs].count(None):  # poll every process, every round
            bad = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if bad:
                failed, why = bad[0], f"exited with code {procs[bad[0]].returncode}"
                break
            if time.monotonic() > deadline:
                failed, why = -1, f"ran past the timeout of {timeout} s"
                break
            time.sleep(0.05)
        if failed is not None and failed >= 0:  # the others report what they know, then stop, or are stopped
            end = min(deadline, time.monotonic() + grace)
            while [p.poll() for p in procs].count(None) and time.monotonic() < end:
                time.sleep(0.05)
    finally:
        for i, p in enumerate(procs):  # the others would wait in their next collective: stop them
            if p.poll() is None:
                stopped.append(i)
                p.kill()
        for p in procs:
            p.wait()
        for f in logs:
            if f is not None:
                f.close()
    codes = [p.returncode for p in procs]
    if failed is None and any(codes):
        failed = next(i for i, c in enumerate(codes) if c)
        why = f"exited with code {codes[failed]}"
    if failed is not None:
        who = "the job" if failed < 0 else f"process {failed} of {processes}"
        tail = ""
        if log_dir:
            for i in [i for i, c in enumerate(codes) if c and i not in stopped] or [max(failed, 0)]:
                with open(os.path.join(log_dir, f"process_{i}.log")) as f:
                    tail += f"; the end of process {i}'s log:\n" + f.read()[-3000:]
        kept = f", stopped by the launcher: {stopped}" if stopped else ""
        raise errors.BpjaxError("launch", f"{who} {why} (exit codes {codes}{kept}){tail}")
    return codes


def main(args: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bpjax.train.launch", description=__doc__.split("\n")[0])
    ap.add_argument("--processes", "-n", type=int, required=True, help="number of processes")
    ap.add_argument("--cpu-devices", type=int, default=None, help="CPU devices per process (tests, laptops)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds for the whole job")
    ap.add_argument("--grace", type=float, default=GRACE_S,
                    help="seconds the others have to stop on their own once one process has failed")
    ap.add_argument("--log-dir", default=None, help="one log file per process instead of this terminal")
    ap.add_argument("script", help="the training script")
    ap.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments")
    a = ap.parse_args(args)
    try:
        launch([a.script, *a.script_args], processes=a.processes, cpu_devices=a.cpu_devices, timeout=a.timeout,
               log_dir=a.log_dir, grace=a.grace)
    except errors.BpjaxError as e:
        sys.exit(str(e))


if __name__ == "__main__":
    main()
