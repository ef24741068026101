"""Checkpoints: save and restore any pytree (params, optimiser and layer state, step, PRNG key) safely.

Format: an ``.npz`` file, numpy's zip of ``.npy`` arrays, read back with ``allow_pickle=False``,
so loading a file never runs code. Members, in leaf order::

    leaf_00000.npy, leaf_00001.npy, ...   one per pytree leaf (flattened with its key path)
    bpjax.json                            metadata: bpjax version, user record, tree structure,
                                          per-leaf path/dtype/shape/kind, and a SHA-256 checksum

``np.load(path)`` opens it too. The SHA-256 covers the metadata (less the checksum itself) and the
bytes of every array member; it is verified on every load, on top of zip's per-member CRC-32.

Writes are atomic: the file is written to a temporary file in the same directory, flushed and
``fsync``-ed, then ``os.replace``-d onto ``path`` and the directory is ``fsync``-ed. The temporary
file is ``.<name>.tmp-<pid>-<16 random hex digits>``, created exclusively (``O_EXCL``), so two
writers (processes, threads, or hosts sharing a file system) never write into the same temporary
file; when several save to one ``path`` at once, the last rename wins and every reader sees one
whole tree. A process killed mid-save leaves the previous checkpoint intact and at worst a stray
temporary file, which loading never reads (``restore`` refuses a temporary file by name) and
which may be deleted once no save is running. The bytes are deterministic: no timestamps, fixed
zip dates, so the same tree gives the same file.

Leaves may be arrays (any dtype but object; ``bfloat16`` and other ml_dtypes are stored as raw bits
and viewed back), typed PRNG keys (``jax.random.key``: stored as ``key_data`` with the impl name and
rewrapped), and Python ``bool``/``int``/``float`` (restored as such). ``restore(path, like=tree)``
rebuilds exactly ``tree``'s structure (optax NamedTuple states included) after checking every leaf
path, kind, shape and dtype. Without ``like`` no class is imported or rebuilt while loading: dicts,
lists and tuples come back as such, NamedTuples (optax states) and ``OrderedDict``s as dicts of
their fields, other registered pytree nodes as lists of their children, and a
:class:`PlainTreeWarning` names each such container. Such a tree is fine to inspect but not to
train with: optax needs its own state classes, so restore an optimizer state with
``like=optimizer.init(params)`` (or a dict holding it).

Arrays split over the devices of several processes (:func:`spans_processes`, e.g. params whose model axis spans
hosts) cannot go into one file without gathering them whole: ``save(path, tree, backend="orbax")`` writes the
sharded backend's directory instead (:mod:`~bpjax.checkpoint.sharded`, on orbax-checkpoint, ``pip install -e
".[orbax]"``), where every process writes its own shards, and ``restore`` reads each leaf straight into the
sharding of ``like``. ``restore`` and ``read_metadata`` tell the two apart by what is on disk (a file or a
directory); both keep the same record, checks and messages.

A training run's checkpoints live in a *run folder* (:mod:`~bpjax.checkpoint.folder`: one entry per
saved step, the newest few kept, one writer at a time); :func:`restore` and :func:`read_metadata`
given such a folder read its newest entry that passes every check, and warn
(:class:`~bpjax.checkpoint.folder.DamagedCheckpointWarning`) when they skip a damaged newer one.

The package: :func:`save`, :func:`restore` and :func:`read_metadata` here; :mod:`~bpjax.checkpoint.encoding`
(tree structure and leaves <-> JSON and ``.npy``, the checksum); :mod:`~bpjax.checkpoint.atomic` (the
write); :mod:`~bpjax.checkpoint.reading` (the read and its checks); :mod:`~bpjax.checkpoint.sharded` (the
sharded backend); :mod:`~bpjax.checkpoint.folder` (run folders); :mod:`~bpjax.checkpoint.arguments`.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional

import jax

from bpjax import errors
from bpjax.checkpoint.arguments import check_json, file_path, model_name, tilde_hint
from bpjax.checkpoint.atomic import atomic_write
from bpjax.checkpoint.encoding import (
    FORMAT,
    FORMAT_VERSION,
    canonical_json,
    checksum,
    decode_leaf,
    decode_structure,
    encode_leaf,
    encode_structure,
    leaf_label,
    npy_bytes,
    spans_processes,
    to_numpy,
)
from bpjax.checkpoint.folder import DamagedCheckpointWarning, StaleLockWarning, is_run_folder, newest
from bpjax.checkpoint.reading import decode, read

__all__ = ["BACKENDS", "FORMAT", "FORMAT_VERSION", "DamagedCheckpointWarning", "PlainTreeWarning",
           "StaleLockWarning", "read_metadata", "restore", "save", "spans_processes"]

BACKENDS = ("npz", "orbax")
"""The ``backend=`` choices of :func:`save`, one ``.npz`` file (``"npz"``) or orbax's sharded directory."""


class PlainTreeWarning(UserWarning):
    """:func:`restore` without ``like`` returned NamedTuples or other pytree nodes as plain dicts/lists.

    Make it an error with ``warnings.simplefilter("error", bp.checkpoint.PlainTreeWarning)``.
    """


def _version() -> str:
    import bpjax
    return getattr(bpjax, "__version__", "unknown")


def _warn_plain(where: str, plain: list) -> None:
    shown = ", ".join(f"{leaf_label(p)} ({name} -> {kind})" for p, name, kind in plain[:4])
    warnings.warn(f"{where}: without `like`, {len(plain)} saved container(s) come back as plain dicts/lists: "
                  f"{shown}{' ...' if len(plain) > 4 else ''}. Fine to inspect, not to train with: optax fails on "
                  f"a plain dict (\"'dict' object has no attribute 'mu'\"). Pass `like` with the same structure, "
                  f"e.g. like=optimizer.init(params) for an optimizer state (or a dict holding it)",
                  PlainTreeWarning, stacklevel=3)


# ---------------------------------------------------------------- save


def save(path, tree, *, metadata: Optional[dict] = None, model=None, backend: str = "npz") -> str:
    """Write ``tree`` to ``path`` atomically; returns ``path`` (as a str).

    Args:
      path: the file to write, a str or ``os.PathLike`` (``.npz`` by convention; no suffix is added), or with
        ``backend="orbax"`` the directory to create. Its parent directory must exist.
      tree: any pytree of arrays, typed PRNG keys and Python numbers, e.g.
        ``{"params": params, "opt_state": opt_state, "state": state, "step": 100, "key": key}``.
        Concrete values only (not inside ``jax.jit``).
      metadata: a dict of JSON values with str keys (finite numbers; tuples read back as lists),
        stored beside the arrays: read it with :func:`read_metadata`.
      model: a :class:`bpjax.Layer` (its name is recorded) or a description string.
      backend: ``"npz"``, one ``.npz`` file that one process writes (with several processes, process 0 alone,
        after gathering what the others hold); or ``"orbax"``, the sharded backend
        (:mod:`~bpjax.checkpoint.sharded`, orbax-checkpoint: ``pip install -e ".[orbax]"``) for arrays split
        over several processes (:func:`spans_processes`): every process calls ``save`` with the same new
        directory on a shared file system and writes the shards it holds.

    Raises:
      BpjaxError: a path that is not a str/PathLike, an unsavable leaf (with ``"npz"``, one split over several
        processes), metadata that is not JSON, a missing directory, or a failed write (naming the path, the
        argument and what it got).

    Examples:
      >>> import os, tempfile
      >>> _, params = L.Dense(4).init(jax.random.key(0), (3,))
      >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
      >>> bp.checkpoint.save(path, {"params": params, "step": 100}, metadata={"lr": 0.01}) == path
      True
      >>> restored = bp.checkpoint.restore(path)
      >>> restored["step"], restored["params"]["W"].shape
      (100, (3, 4))
    """
    path = file_path("save", path, tree)
    where = f"checkpoint.save({path})"
    if backend not in BACKENDS:
        raise errors.BpjaxError(where, f"backend: expected one of {BACKENDS}, got {backend!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        found = "is a file" if os.path.exists(directory) else "does not exist"
        raise errors.BpjaxError(where, f"expected an existing directory, {directory!r} {found}{tilde_hint(path)}")
    if backend == "npz" and os.path.isdir(path):
        raise errors.BpjaxError(where, "expected a file path, got a directory")
    if metadata is not None and not isinstance(metadata, dict):
        raise errors.BpjaxTypeError(where, f"metadata: expected a dict, got {type(metadata).__name__}")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    encode = to_numpy if backend == "npz" else encode_leaf
    with errors.context(where):  # each check below names its own part: metadata[...], model, a leaf, the tree
        check_json("metadata", metadata)
        name = model_name(model)
        encoded = [encode(jax.tree_util.keystr(p), leaf) for p, leaf in leaves]
        structure = encode_structure(treedef)
    values, records = [value for value, _ in encoded], [record for _, record in encoded]
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "bpjax_version": _version(),
            "model": name, "metadata": metadata or {}, "structure": structure, "leaves": records}
    if backend == "orbax":
        from bpjax.checkpoint import sharded

        sharded.save(where, path, values, dict(meta, backend=backend))
        return path
    members = [npy_bytes(a) for a in values]
    meta["sha256"] = checksum(meta, members)
    atomic_write(where, path, members, canonical_json(meta))
    return path


# ---------------------------------------------------------------- load


def _read_entry(path: str, where: str):
    """``(entry, meta, arrays)``: the checkpoint at ``path`` read with every check (:func:`read`), or a run
    folder's newest entry that passes them."""
    if is_run_folder(path):
        found = newest(path, lambda entry: read(entry, f"{where} {entry}"), where)
        if found is None:
            raise errors.BpjaxError(where, "the run folder holds no checkpoint yet (no step_* entry)")
        return (found[1], *found[2])
    return (path, *read(path, where))


def read_metadata(path) -> dict:
    """The metadata record of the checkpoint at ``path`` (verified): ``bpjax_version``, ``model``,
    ``metadata`` (the user dict given to :func:`save`), ``leaves`` (path, dtype, shape per leaf), ``backend``
    (``"npz"`` for a file, ``"orbax"`` for a sharded checkpoint's directory, whose record is read without
    importing orbax). ``path`` may be a run folder (``fit``'s ``checkpoint_path``): its newest entry is read.

    Examples:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
      >>> _ = bp.checkpoint.save(path, {"b": jnp.zeros(4)}, metadata={"lr": 0.01}, model="Dense(4)")
      >>> record = bp.checkpoint.read_metadata(path)
      >>> record["metadata"], record["model"], record["backend"], record["leaves"]
      ({'lr': 0.01}, 'Dense(4)', 'npz', [{'dtype': 'float32', 'kind': 'array', 'path': "['b']", 'shape': [4]}])
    """
    path = file_path("read_metadata", path)
    _, meta, _ = _read_entry(path, f"checkpoint.read_metadata({path})")
    return {"backend": meta.get("backend", "npz"),
            **{k: meta[k] for k in ("bpjax_version", "model", "metadata", "leaves", "format_version")}}


def restore(path, *, like: Any = None):
    """Read the checkpoint at ``path``.

    Args:
      path: a file written by :func:`save` (a str or ``os.PathLike``; never one of its temporary files), or the
        directory of a sharded checkpoint (``backend="orbax"``; every process calls ``restore``), or a run
        folder (``fit``'s ``checkpoint_path``), whose newest entry that passes every check is read.
      like: a tree of the expected structure (e.g. freshly initialised params and optimiser state,
        ``like={"params": params, "opt_state": optimizer.init(params), "step": 0}``; leaves may be
        arrays, ``jax.ShapeDtypeStruct``, typed or raw PRNG keys, or Python numbers). When given,
        every leaf path, kind, shape and dtype is checked and the result has exactly ``like``'s
        structure, NamedTuples included. From a sharded checkpoint, a leaf of ``like`` with a sharding
        (a ``jax.Array``, or a ``jax.ShapeDtypeStruct`` with ``sharding=``) comes back in that sharding, each
        process reading only its devices' shards; other leaves are read whole, as from a file.

    Returns:
      The saved tree: ``like``'s structure; without ``like``, nested dicts/lists/tuples, with
      NamedTuples (optax states) as dicts of their fields and other pytree nodes as lists, each
      named by a :class:`PlainTreeWarning`. To train with a restored optimizer state, pass
      ``like=optimizer.init(params)`` (or a dict holding it): optax cannot use the plain dicts.

    Raises:
      BpjaxError: a path that is not a str/PathLike, a missing, truncated, corrupted or foreign file or
        directory, a temporary file or directory, or a tree that does not match ``like`` (naming the leaf path,
        the expected and the found kind/shape/dtype).

    Examples:
      >>> import os, tempfile
      >>> _, params = L.Dense(4).init(jax.random.key(0), (3,))
      >>> path = bp.checkpoint.save(os.path.join(tempfile.mkdtemp(), "params.npz"), params)
      >>> restored = bp.checkpoint.restore(path, like=params)        # checked against like's structure
      >>> bool((restored["W"] == params["W"]).all())
      True
    """
    path = file_path("restore", path)
    where = f"checkpoint.restore({path})"
    entry, meta, arrays = _read_entry(path, where)
    if like is not None:
        return decode(where, entry, meta, arrays, like)
    if arrays is None:  # a sharded checkpoint, read whole
        from bpjax.checkpoint import sharded

        arrays = sharded.read_arrays(where, entry, meta, None)
    values = [decode_leaf(a, r) for a, r in zip(arrays, meta["leaves"])]
    plain: list = []
    tree = decode_structure(meta["structure"], iter(values), "", plain)
    if plain:
        _warn_plain(where, plain)
    return tree
