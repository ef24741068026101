"""Training: one step (:func:`make_step`), whole runs in one compiled program (:func:`fit`, :func:`fit_many`).

The package reads top-down:

- :mod:`~bpjax.train.step`: one step, ``params -= optimizer(grads)``, for any optax optimiser;
- :mod:`~bpjax.train.loop`: ``length`` steps in one ``lax.scan`` (batches, keys, evaluation, NaN guard);
- :mod:`~bpjax.train.driver`: chunks one after another, with progress, checkpoints and callbacks;
- :mod:`~bpjax.train.resume`: the run folder, checkpoints and resume; :mod:`~bpjax.train.fingerprint`: what
  a checkpoint records of its run; :mod:`~bpjax.train.guard`: the NaN guard;
  :mod:`~bpjax.train.history`: what a run returns;
- :mod:`~bpjax.train.validate`: eager checks of the inputs; :mod:`~bpjax.train.sharding`: many devices;
- :mod:`~bpjax.train.stream`: batches streamed from an iterable; :mod:`~bpjax.train.distributed` and
  :mod:`~bpjax.train.launch`: many processes;
- :mod:`~bpjax.train.runs`: ``fit``, ``fit_many`` and ``init_many``, which tie the above together (a module
  named apart from the function, so ``bpjax.train.fit`` is only the function).

One order everywhere: ``params, opt_state, state`` (state only for contextual models in
``make_step``'s return; always in :class:`FitResult`).
"""

from bpjax.grad import BACKWARDS
from bpjax.train.cache import clear_cache
from bpjax.train.distributed import every_process, initialize, process_local
from bpjax.train.history import FitResult
from bpjax.train.resume import NonFiniteStateWarning, resume_step
from bpjax.train.runs import fit, fit_many, init_many
from bpjax.train.sharding import data_parallel_mesh, make_mesh, replicate, shard_batch
from bpjax.train.step import make_step

__all__ = ["BACKWARDS", "FitResult", "NonFiniteStateWarning", "clear_cache", "data_parallel_mesh", "every_process",
           "fit", "fit_many", "init_many", "initialize", "make_mesh", "make_step", "process_local", "replicate",
           "resume_step", "shard_batch"]
