"""Many processes (one per host, or several on one machine): start-up, process-local data, one writer, agreement.

JAX's multi-controller runtime is the engine: every process runs the same program on its own
devices, ``jax.devices()`` lists every process's devices (process 0's first), and the compiler
inserts the collectives (gloo on CPU). This module adds what a training run needs on top:

- :func:`initialize`: ``jax.distributed.initialize`` from arguments, the ``BPJAX_*`` variables
  that :mod:`bpjax.train.launch` sets, or JAX's cluster detection (SLURM, Open MPI, Kubernetes,
  TPU pods);
- :func:`process_local`: global arrays from each process's own rows;
- :func:`on_main` and :func:`every_process`: work done by process 0 only (checkpoint files, progress,
  callbacks) or by every process, with every process learning whether it failed, so that none
  waits forever in the next collective;
- :func:`broadcast` and :func:`to_host`: values of process 0 sent to all, global arrays fetched
  without reading non-addressable data;
- :func:`reports_lost_processes` and :func:`checkpoint_written`: when a process dies, the others
  stop within about ``HEARTBEAT_S`` seconds with a ``BpjaxError`` naming it and the run's last
  checkpoint.

How a lost process is survived. JAX's coordination service (heartbeats, the key-value store the
gloo collectives meet through) normally lives inside process 0, and by default a process that
learns of a failure ends itself with ``abort()``: the survivors of process 0 died at once, those of
another process after JAX's heartbeat timeout (100 s), with a C++ trace; and a collective whose
peer died may also wait forever instead of failing. Here the service runs in a small process of
its own (started by process 0, only ``jaxlib`` imported, outliving process 0 by
``SERVICE_AFTER_S``), in JAX's "recoverable" mode, where a lost process is reported to whoever
asks (``get_live_nodes``) instead of aborting the others. A thread in every process asks every
``WATCH_S``; once the service has dropped a silent process (within ``HEARTBEAT_S``), a run whose
collective failed raises a ``BpjaxError`` (:func:`reports_lost_processes`), and a run still waiting
in a collective after ``GRACE_S`` more is ended with the same report and exit code 1. At exit,
the processes wait for each other (the synchronised shutdown that recoverable mode drops), except
after a failure. Before all that, :func:`initialize` holds a roll call, so that a process that
never started is named instead of JAX aborting the others after its timeout. The parts of JAX
used beyond its public API: ``jaxlib``'s service constructor, the client's ``get_live_nodes``
(as ``jax.experimental.multihost_utils.live_devices`` uses it) and key-value store, and JAX's
cluster detection classes.
"""

from __future__ import annotations

import atexit
import functools
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bpjax import errors

__all__ = ["EveryProcess", "broadcast", "checkpoint_written", "every_process", "initialize", "is_main", "on_main",
           "process_local", "reports_lost_processes", "to_host"]

ENV = ("BPJAX_COORDINATOR_ADDRESS", "BPJAX_NUM_PROCESSES", "BPJAX_PROCESS_ID")
HEARTBEAT_S = 10  # a process silent this long is lost (JAX's default: 100 s)
WATCH_S = 1.0  # how often each process asks the coordination service which processes are alive
GRACE_S = 5  # once a process is lost, how long a run has to stop on its own before its process is ended
LOST_WAIT_S = HEARTBEAT_S + GRACE_S  # how long a failed collective waits for the service to name a lost process
LEAVE_S = 300  # at exit, how long a process waits for the others to finish too (JAX's shutdown timeout)
# At exit, how long a process waits for its watcher to end: the watcher may be inside the service's roll call of the
# live processes, which ends once every other process has ended its own watcher or left; a watcher still inside C++
# when Python finalises would be torn down there (``terminate called ... FATAL: exception not rethrown``, exit -6)
WATCHER_EXIT_S = HEARTBEAT_S + 2 * WATCH_S
CONNECT_S = 300  # how long the processes wait for each other at start (JAX's default)
SERVICE_AFTER_S = 5  # how long the service outlives process 0 after every process finished normally
SERVICE_AFTER_FAILURE_S = 60  # ... and otherwise (the survivors stop within ``LOST_WAIT_S``)
LEFT = "bpjax/left/"  # key-value store: ``LEFT + str(i)`` once process ``i`` has finished normally
STATUS_CODES = ("UNKNOWN", "INTERNAL", "UNAVAILABLE", "ABORTED", "CANCELLED", "DEADLINE_EXCEEDED")

# The coordination service's process: ``python -c SERVICE port processes timeout heartbeat leave after after_f``.
# First a roll call on ``port``: each process sends its id; once all have, each is told "go" (after ``timeout`` s
# without everyone, "missing 1,3", and the program ends). Then JAX's service in recoverable mode, on the same port,
# until process 0 closes its stdin (writing "done" first after a normal exit) and ``after*`` seconds have passed.
SERVICE = r"""# bpjax: the coordination service of a distributed job (see bpjax.train.distributed)
import os, socket, sys, time
port, count, timeout, heartbeat, leave = (int(a) for a in sys.argv[1:6])
server = (socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
          if socket.has_dualstack_ipv6() else socket.create_server(("", port)))
print("listening", flush=True)
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
os.dup2(null, 2)
here, deadline = {}, time.monotonic() + timeout
while len(here) < count and time.monotonic() < deadline:
    server.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        conn = server.accept()[0]
        conn.settimeout(10)
        here[int(conn.makefile().readline())] = conn
    except (OSError, ValueError):
        pass
missing = [i for i in range(count) if i not in here]
for conn in here.values():
    conn.sendall(b"go\n" if not missing else ("missing " + ",".join(map(str, missing)) + "\n").encode())
for conn in here.values():  # the process closes first: the port is free again at once
    try:
        conn.recv(1)
    except OSError:
        pass
    conn.close()
server.close()
if missing:
    sys.exit(0)
from jaxlib import _jax
service = _jax.get_distributed_runtime_service(f"[::]:{port}", count, heartbeat_timeout=heartbeat,
                                               shutdown_timeout=leave, recoverable=True)
done = sys.stdin.readline() == "done\n"
time.sleep(float(sys.argv[6] if done else sys.argv[7]))
service.shutdown()
"""


class _Run:
    """What this process knows of its distributed job and of its current run."""

    service: Optional[subprocess.Popen] = None  # process 0: the coordination service's process
    started = False  # by :func:`initialize` (the service is ours, in recoverable mode)
    gone: frozenset = frozenset()  # the processes found lost
    found = threading.Event()  # set once ``gone`` is
    running = 0  # runs in progress in this process (:func:`reports_lost_processes`)
    path = None  # the current run's checkpoint_path
    checkpoint: Optional[tuple] = None  # ``(path, step)`` of the last checkpoint the current run wrote
    leaving = threading.Event()  # set at exit once every process has finished: the watcher ends
    watcher: Optional[threading.Thread] = None


def _cluster():
    """The cluster environment JAX's ``jax.distributed.initialize()`` would detect (``None``: none)."""
    from jax._src.clusters import ClusterEnv

    return next((env for env in ClusterEnv._cluster_types if not env.opt_in_only_method and env.is_env_present()),
                None)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, initialization_timeout: int = CONNECT_S) -> bool:
    """``jax.distributed.initialize(coordinator_address, num_processes, process_id)``, CPU collectives gloo.

    Call it first in every process, before any other use of jax. Arguments left ``None`` are read
    from ``BPJAX_COORDINATOR_ADDRESS`` (``"host:port"`` of process 0), ``BPJAX_NUM_PROCESSES`` and
    ``BPJAX_PROCESS_ID`` (what ``python -m bpjax.train.launch`` sets). With no argument and none of
    the variables, JAX's cluster detection decides: under SLURM (``srun``), Open MPI (``mpirun``),
    Kubernetes or a TPU pod of several tasks, every task joins the job where JAX places it; with no
    cluster, or a cluster of one task, the script runs as one process and nothing is done.

    Every process first waits until all have started (a roll call at the coordinator's port), so
    that a missing one is reported here, by name, instead of by JAX aborting the process.

    Args:
      initialization_timeout: seconds the processes wait for each other to start.

    Returns:
      ``True`` when it started the distributed runtime, ``False`` for one process.

    Raises:
      BpjaxError: a half-given or invalid configuration, jax already in use, nothing answering at
        the coordinator's address, or processes that did not start in time; it says where the
        configuration came from (arguments, ``BPJAX_*`` variables, or the cluster JAX detected).
    """
    if _Run.started:
        raise errors.BpjaxError("initialize", "the distributed runtime is already started in this process: call "
                                              "initialize once, first")
    env = [os.environ.get(k) for k in ENV]
    given = (coordinator_address or env[0], env[1] if num_processes is None else num_processes,
             env[2] if process_id is None else process_id)
    local_devices = None
    if all(v is None for v in given):
        cluster = _cluster()
        if cluster is None or cluster.get_process_count() == 1:
            return False
        from jax._src.clusters import ClusterEnv

        found = ClusterEnv.auto_detect_unset_distributed_params(
            os.environ.get("JAX_COORDINATOR_ADDRESS"), None, None, None, None, initialization_timeout)
        address, count, index, local_devices = str(found[0]), int(found[1]), int(found[2]), found[3]  # type: ignore[arg-type]
        source = f"JAX's cluster detection ({cluster.__name__})"
    else:
        missing = [k for k, v in zip(ENV, given) if v is None]
        if missing:
            raise errors.BpjaxError("initialize", f"expected coordinator_address, num_processes and process_id "
                                                  f"(or the variables {', '.join(ENV)}) together, got none for "
                                                  f"{missing}")
        try:
            count, index = int(given[1]), int(given[2])  # type: ignore[arg-type]  # not None: checked above
        except ValueError:
            raise errors.BpjaxError("initialize", f"num_processes and process_id must be integers, got "
                                                  f"{given[1]!r} and {given[2]!r}") from None
        count = errors.positive_int("initialize", "num_processes", count)
        if not 0 <= index < count:
            raise errors.BpjaxError("initialize", f"process_id must lie in [0, {count}), got {index}")
        address = str(given[0])
        source = "the arguments" if any(a is not None for a in (coordinator_address, num_processes, process_id)) \
            else "the BPJAX_* variables"
    job = f"according to {source}, this is process {index} of {count} with the coordinator at {address}"
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise errors.BpjaxError("initialize", f"{job}, but jax is already in use in this process: call "
                                              f"bp.train.initialize() first, before any other use of jax")
    if index == 0:
        _Run.service = _start_service(address, count, initialization_timeout)
    _roll_call(address, index, count, initialization_timeout, job)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # process 0's in-process service (on a free local port) stays unused: the service started above serves
    jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=index,
                               local_device_ids=local_devices, initialization_timeout=initialization_timeout,
                               heartbeat_timeout_seconds=HEARTBEAT_S, shutdown_timeout_seconds=LEAVE_S,
                               coordinator_bind_address="127.0.0.1:0" if index == 0 else None)
    from jax._src import distributed as jax_distributed

    if jax_distributed.global_state.service is not None:
        jax_distributed.global_state.service.shutdown()
        jax_distributed.global_state.service = None
    _Run.started = True
    _Run.watcher = threading.Thread(target=_watch, args=(jax_distributed.global_state.client, count), daemon=True,
                                    name="bpjax-watch")
    _Run.watcher.start()
    atexit.register(_leave_together)  # after JAX's own exit handler, so it runs before it
    return True


def _start_service(address: str, count: int, timeout: int) -> subprocess.Popen:
    """Start the coordination service's process on ``address``'s port, every interface; returns once it listens."""
    port = address.rsplit(":", 1)[1]
    argv = [port, count, timeout, HEARTBEAT_S, LEAVE_S, SERVICE_AFTER_S, SERVICE_AFTER_FAILURE_S]
    proc = subprocess.Popen([sys.executable, "-c", SERVICE, *map(str, argv)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    # (a session of its own: a Ctrl-C or signal to the job's process group leaves it serving the survivors)
    out = proc.stdout.readline()  # type: ignore[union-attr]  # a pipe: set above
    if out != "listening\n":
        out += proc.stdout.read()  # type: ignore[union-attr]
        proc.wait()
        raise errors.BpjaxError("initialize", f"the coordination service could not start on port {port} (exit "
                                              f"code {proc.returncode}): {out[-2000:]}")
    return proc


def _roll_call(address: str, index: int, count: int, timeout: int, job: str) -> None:
    """Tell the coordinator's roll call that process ``index`` is here; return once all ``count`` are."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as conn:
                conn.sendall(f"{index}\n".encode())
                conn.settimeout(timeout + 30)  # the roll call ends within ``timeout`` of its start
                answer = conn.makefile().readline().strip()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise errors.BpjaxError("initialize", f"{job}, but nothing answered at {address} within {timeout} "
                                                      f"s: start all {count} processes (process 0 starts the "
                                                      f"coordinator), or run one process without those settings"
                                        ) from None
            time.sleep(0.2)
    if answer != "go":
        if answer.startswith("missing "):
            ids = answer.split(" ", 1)[1].split(",")
            why = f"process {ids[0]}" if len(ids) == 1 else f"processes {', '.join(ids)}"
            why += f" did not start within {timeout} s"
        else:
            why = f"something other than a bpjax coordinator answers there ({answer[:100]!r})"
        raise errors.BpjaxError("initialize", f"{job}, but {why}: start all {count} processes (under SLURM with "
                                              f"srun, under Open MPI with mpirun), or run one process without "
                                              f"those settings")


def _left(client) -> set:
    """The processes that have finished normally (they said so in the key-value store)."""
    return {int(key.rsplit("/", 1)[1]) for key, _ in client.key_value_dir_get(LEFT)}


def _watch(client, count: int) -> None:
    """Every ``WATCH_S``, ask the service which processes are alive; on a loss, record it and end a stuck run.

    ``get_live_nodes`` is a barrier of the live processes (every process's watcher asks, and the
    answer comes when all have); a lost process is dropped from it within ``HEARTBEAT_S``. A run in
    progress then has ``GRACE_S`` to stop on its own (its next collective fails and
    :func:`reports_lost_processes` raises); one still running waits in a collective that will never
    return, and cannot be interrupted: the watcher writes the report and ends the process with exit
    code 1 (where JAX would ``abort()`` it, or let it wait forever).
    """
    everyone = set(range(count))
    try:
        while not _Run.leaving.is_set():
            gone = everyone - set(client.get_live_nodes(sorted(everyone)))
            gone -= _left(client) if gone else set()
            if gone:
                break
            _Run.leaving.wait(WATCH_S)
        else:  # every process has finished: this one is leaving
            return
    except Exception:  # noqa: BLE001 -- the service has ended: the job is over (or JAX ends this process)
        return
    _Run.gone = frozenset(gone)
    _Run.found.set()
    end = time.monotonic() + GRACE_S
    while _Run.running and time.monotonic() < end:
        time.sleep(0.05)
    if _Run.running:
        report = _lost_message(sorted(gone), count, f"the run here did not stop within {GRACE_S} s of the loss: a "
                                                    f"collective with a lost process may never return, so this "
                                                    f"process is ended", _Run.path)
        sys.stdout.flush()
        sys.stderr.write(f"{errors.BpjaxError.__module__}.BpjaxError: {errors.BpjaxError('fit', report)}\n")
        sys.stderr.flush()
        os._exit(1)


def _leave_together() -> None:
    """At exit: wait for the other processes to finish too (not after a failure), end the watcher, then let the
    service go."""
    if _Run.gone or getattr(sys, "last_value", None) is not None:  # a loss, or an exception ends this process
        return
    from jax._src import distributed as jax_distributed

    client, everyone = jax_distributed.global_state.client, set(range(jax.process_count()))
    if client is None:  # JAX's runtime was shut down already
        return
    client.key_value_set(LEFT + str(jax.process_index()), "")
    end = time.monotonic() + LEAVE_S
    while not _Run.gone and time.monotonic() < end:
        if _left(client) == everyone:
            _Run.leaving.set()  # the watcher ends (before Python finalises: see WATCHER_EXIT_S)
            if _Run.watcher is not None:
                _Run.watcher.join(WATCHER_EXIT_S)
            if _Run.service is not None:  # every process is done: the service may end soon
                _Run.service.stdin.write("done\n")  # type: ignore[union-attr]  # a pipe: set in _start_service
                _Run.service.stdin.flush()  # type: ignore[union-attr]
            return
        time.sleep(0.05)


def checkpoint_written(path, step: int) -> None:
    """Record that the current run's checkpoint at ``path`` now holds step ``step`` (every process calls it)."""
    _Run.checkpoint = (path, int(step))


def _is_runtime_failure(e: BaseException) -> bool:
    """Whether ``e`` is an error of the XLA runtime (a failed collective among them), not of the program."""
    return (isinstance(e, (RuntimeError, ValueError)) and not isinstance(e, errors.BpjaxError)
            and str(e).split(":", 1)[0] in STATUS_CODES)


def _lost_message(lost: list, count: int, why: str, checkpoint_path) -> str:
    """The report of lost processes: which, what this process saw, and where the run resumes."""
    who = f"process {lost[0]} of {count} was lost" if len(lost) == 1 else \
        f"processes {', '.join(map(str, lost))} of {count} were lost"
    if _Run.checkpoint is not None:
        path, step = _Run.checkpoint
        where = (f"the last checkpoint this run wrote is step {step} in {path!r}: restart all {count} processes "
                 f"with the same fit(..., checkpoint_path={path!r}) to resume from it")
    elif checkpoint_path is not None:
        where = (f"this run wrote no checkpoint yet: restarting all {count} processes with the same fit(..., "
                 f"checkpoint_path={checkpoint_path!r}) resumes from the newest one there, if any, else from step 0")
    else:
        where = ("this run wrote no checkpoint (checkpoint_path=None): a restart begins at step 0; pass "
                 "checkpoint_path (and checkpoint_every) to fit to be able to resume")
    return f"{who} ({why}); {where}"


def reports_lost_processes(run: Callable) -> Callable:
    """Wrap a training run (``run(..., checkpoint=run folder or None)``) so that a lost process stops it with a
    ``BpjaxError``.

    In a job started by :func:`initialize`, when a collective fails the wrapper waits (at most
    ``LOST_WAIT_S``) for the coordination service to name a lost process, and raises a
    ``BpjaxError`` naming it, the failed collective, and the last checkpoint the run wrote
    (:func:`checkpoint_written`) with how to resume. A run that does not stop on its own is ended
    by the watcher (see ``_watch``). Other errors pass unchanged.
    """
    @functools.wraps(run)
    def wrapped(*args, **kwargs):
        folder = kwargs.get("checkpoint")  # the run's open run folder (bpjax.train.resume.RunFolder), or None
        _Run.checkpoint, _Run.path = None, getattr(folder, "path", None)
        count = jax.process_count()
        if _Run.gone:
            raise errors.BpjaxError("fit", _lost_message(sorted(_Run.gone), count, "before this run started",
                                                         _Run.path))
        _Run.running += 1
        try:
            return run(*args, **kwargs)
        except Exception as e:
            if not (_Run.started and _is_runtime_failure(e) and _Run.found.wait(LOST_WAIT_S)):
                raise  # not a failed collective, or no process lost: an error of this process
            why = f"here a collective failed: {str(e).splitlines()[0][:300]}"
            raise errors.BpjaxError("fit", _lost_message(sorted(_Run.gone), count, why, _Run.path)) from e
        finally:
            _Run.running -= 1

    return wrapped


def is_main() -> bool:
    """Whether this is process 0, the one that writes files and shows progress."""
    return jax.process_index() == 0


def process_local(tree, mesh: Mesh):
    """Global arrays, split over ``mesh``'s data axis, from this process's own rows (a pytree of arrays).

    Process ``p`` passes rows ``p*N/P .. (p+1)*N/P-1`` of the global ``(N, ...)`` arrays (with the mesh
    over ``jax.devices()``, whose order is process 0's devices first); each process holds only its
    rows. With one process it is ``shard_batch``. Row counts must divide over the local devices.

    Examples:
      >>> mesh = bp.train.data_parallel_mesh()
      >>> x, y = bp.train.process_local((jnp.ones((8, 3)), jnp.zeros(8)), mesh)   # this process's rows
      >>> x.shape, y.shape                                                # the global shapes (one process)
      ((8, 3), (8,))
    """
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)


class EveryProcess(NamedTuple):
    """A ``fit`` callback run by every process (a bare callback runs on process 0 only)."""

    fn: Callable

    def __call__(self, *args):
        return self.fn(*args)


def every_process(callback: Callable) -> EveryProcess:
    """Mark ``callback(step, FitResult)`` to run in every process, not only in process 0.

    Examples:
      >>> def log(step, result):                   # e.g. each process writes its own shard's statistics
      ...     pass
      >>> callback = bp.train.every_process(log)   # fit(..., callback=callback) runs it in every process
      >>> callable(callback)
      True
    """
    return EveryProcess(callback)


def on_main(fn: Callable[[], Any], what: str, *, all_processes: bool = False):
    """Run ``fn()`` in process 0 (in every process with ``all_processes``); every process then learns whether
    it raised anywhere: the process where it raised re-raises, the others raise a ``BpjaxError`` naming
    ``what`` and the process, so that no process is left waiting in a collective."""
    error = None
    if all_processes or is_main():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 -- passed on below, after the others are told
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
        if error is None and failed.any():
            raise errors.BpjaxError("fit", f"{what} raised in process {int(np.argmax(failed))}; every process "
                                           f"stops here")
    if error is not None:
        raise error


def broadcast(tree, like):
    """Process 0's ``tree`` (a pytree of arrays, typed PRNG keys and numbers) in every process, as numpy leaves
    (keys as keys); the other processes pass ``tree=None`` and ``like``, a tree of the same structure."""
    source = tree if is_main() else like
    if jax.process_count() == 1:
        return source
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(source)
    keys = [isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key) for a in leaves]
    raw = [np.asarray(jax.random.key_data(a)) if k else np.asarray(a) for a, k in zip(leaves, keys)]
    out = multihost_utils.broadcast_one_to_all(raw)
    impls = [jax.random.key_impl(a) if k else None for a, k in zip(leaves, keys)]
    out = [jax.random.wrap_key_data(o, impl=i) if k else o for o, k, i in zip(out, keys, impls)]
    return jax.tree.unflatten(treedef, [type(a)(o) if isinstance(a, (int, float, bool)) else o
                                        for a, o in zip(leaves, out)])


def to_host(tree):
    """Every array leaf of ``tree`` as numpy; an array split over other processes' devices is gathered first
    (a collective: every process calls it), a replicated or local one is read where it is."""
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable and not a.is_fully_replicated:
            from jax.experimental import multihost_utils

            return multihost_utils.process_allgather(a, tiled=True)
        return a

    return jax.tree.map(one, tree)
