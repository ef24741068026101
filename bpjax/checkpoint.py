"""Checkpoints: save and restore any pytree (params, optimiser and layer state, step, PRNG key) safely.

Format: an ``.npz`` file, numpy's zip of ``.npy`` arrays, read back with ``allow_pickle=False``,
so loading a file never runs code. Members, in leaf order::

    leaf_00000.npy, leaf_00001.npy, ...   one per pytree leaf (flattened with its key path)
    bpjax.json                            metadata: bpjax version, user record, tree structure,
                                          per-leaf path/dtype/shape/kind, and a SHA-256 checksum

``np.load(path)`` opens it too. The SHA-256 covers the metadata (less the checksum itself) and the
bytes of every array member; it is verified on every load, on top of zip's per-member CRC-32.

Writes are atomic: the file is written to a temporary name in the same directory, flushed and
``fsync``-ed, then ``os.replace``-d onto ``path`` and the directory is ``fsync``-ed. A process
killed mid-save leaves the previous checkpoint intact (and at worst a stray ``.<name>.tmp-*`` file,
which loading never looks at). The bytes are deterministic: no timestamps, fixed zip dates, so the
same tree gives the same file.

Leaves may be arrays (any dtype but object; ``bfloat16`` and other ml_dtypes are stored as raw bits
and viewed back), typed PRNG keys (``jax.random.key``: stored as ``key_data`` with the impl name and
rewrapped), and Python ``bool``/``int``/``float`` (restored as such). ``restore(path, like=tree)``
rebuilds exactly ``tree``'s structure (optax NamedTuple states included) after checking every leaf
path, shape and dtype; without ``like`` it returns dicts, lists and tuples (NamedTuples become
dicts of their fields: no class is imported while loading).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import _errors

FORMAT = "bpjax-checkpoint"
FORMAT_VERSION = 1
_META = "bpjax.json"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member dates: same tree, same bytes


def _version() -> str:
    import bpjax
    return getattr(bpjax, "__version__", "unknown")


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


# ---------------------------------------------------------------- tree structure <-> JSON


def _encode_structure(treedef, where: str):
    """A JSON description of ``treedef``: ``"*"`` for a leaf, else a one-key dict per node kind."""
    if treedef.num_leaves == 1 and treedef.num_nodes == 1:
        return "*"
    typ, aux = treedef.node_data()
    kids = [_encode_structure(c, where) for c in treedef.children()]
    if typ is type(None):
        return None
    if typ is dict:
        for k in aux:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise _errors.BpjaxTypeError(where, f"dict keys must be str or int to be saved, got {k!r} "
                                                    f"({type(k).__name__})")
        return {"dict": [[k, kid] for k, kid in zip(aux, kids)]}
    if typ in (tuple, list):
        return {typ.__name__: kids}
    if issubclass(typ, tuple) and hasattr(typ, "_fields"):
        return {"namedtuple": typ.__name__, "fields": [[f, kid] for f, kid in zip(typ._fields, kids)]}
    return {"node": f"{typ.__module__}.{typ.__qualname__}", "children": kids}


def _decode_structure(spec, leaves):
    """Rebuild plain containers from :func:`_encode_structure`'s output, taking leaves in order."""
    if spec == "*":
        return next(leaves)
    if spec is None:
        return None
    if "dict" in spec or "namedtuple" in spec:
        return {k: _decode_structure(v, leaves) for k, v in spec.get("dict", spec.get("fields"))}
    if "tuple" in spec:
        return tuple(_decode_structure(v, leaves) for v in spec["tuple"])
    return [_decode_structure(v, leaves) for v in spec.get("list", spec.get("children"))]


# ---------------------------------------------------------------- leaves <-> arrays


def _to_numpy(where: str, path: str, leaf):
    """``(array to store, leaf record)`` for one leaf."""
    if isinstance(leaf, (bool, int, float)) and not isinstance(leaf, np.generic):
        kind = type(leaf).__name__
        arr: np.ndarray = np.asarray(leaf, {"bool": np.bool_, "int": np.int64, "float": np.float64}[kind])
        return arr, {"path": path, "kind": kind, "dtype": str(arr.dtype), "shape": []}
    if _is_key(leaf):
        data = np.asarray(jax.random.key_data(leaf))
        return data, {"path": path, "kind": "key", "impl": str(jax.random.key_impl(leaf)),
                      "dtype": str(leaf.dtype), "shape": list(np.shape(leaf))}
    if not isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
        raise _errors.BpjaxTypeError(where, f"leaf {path}: expected an array, PRNG key or Python number, "
                                            f"got {type(leaf).__name__}")
    arr = np.asarray(leaf)
    if arr.dtype.hasobject or arr.dtype.isbuiltin == 0:  # objects, raw void and structured dtypes
        raise _errors.BpjaxTypeError(where, f"leaf {path}: dtype {arr.dtype} cannot be saved without pickle")
    record = {"path": path, "kind": "array", "dtype": str(arr.dtype), "shape": list(arr.shape)}
    if arr.dtype.isbuiltin == 2:  # bfloat16, float8, int4: store the raw bits, view them back on load
        if arr.dtype.itemsize not in (1, 2, 4, 8):
            raise _errors.BpjaxTypeError(where, f"leaf {path}: dtype {arr.dtype} cannot be saved")
        arr = arr.view(f"u{arr.dtype.itemsize}")
    return arr, record


def _from_numpy(arr: np.ndarray, record: dict):
    kind = record["kind"]
    if kind in ("bool", "int", "float"):
        return {"bool": bool, "int": int, "float": float}[kind](arr.item())
    if kind == "key":
        return jax.random.wrap_key_data(jnp.asarray(arr), impl=record["impl"])
    if str(arr.dtype) != record["dtype"]:
        arr = arr.view(jnp.dtype(record["dtype"]))
    if jax.dtypes.canonicalize_dtype(arr.dtype) != arr.dtype:
        return arr  # e.g. float64 without x64: keep the numpy array rather than truncate it
    return jnp.asarray(arr)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _checksum(meta: dict, members) -> str:
    h = hashlib.sha256(_canonical_json({k: v for k, v in meta.items() if k != "sha256"}))
    for data in members:
        h.update(data)
    return h.hexdigest()


def _canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


# ---------------------------------------------------------------- save


def save(path, tree, *, metadata: Optional[dict] = None, model=None) -> str:
    """Write ``tree`` to ``path`` atomically; returns ``path`` (as a str).

    Args:
      path: the file to write (``.npz`` by convention; no suffix is added). Its directory must exist.
      tree: any pytree of arrays, typed PRNG keys and Python numbers, e.g.
        ``{"params": params, "opt_state": opt_state, "state": state, "step": 100, "key": key}``.
      metadata: a JSON-serialisable dict stored beside the arrays (read it with :func:`read_metadata`).
      model: a :class:`bpjax.Layer` (its name is recorded) or a description string.

    Raises:
      BpjaxError: an unsavable leaf, non-JSON metadata, or a missing directory (naming the path).
    """
    path = os.fspath(path)
    where = f"checkpoint.save({path})"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise _errors.BpjaxError(where, f"expected an existing directory, {directory!r} does not exist")
    if os.path.isdir(path):
        raise _errors.BpjaxError(where, "expected a file path, got a directory")
    if metadata is not None and not isinstance(metadata, dict):
        raise _errors.BpjaxTypeError(where, f"metadata: expected a dict, got {type(metadata).__name__}")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    arrays, records = [], []
    for p, leaf in leaves:
        arr, rec = _to_numpy(where, jax.tree_util.keystr(p), leaf)
        arrays.append(arr)
        records.append(rec)
    members = [_npy_bytes(a) for a in arrays]
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "bpjax_version": _version(),
            "model": getattr(model, "name", model), "metadata": metadata or {},
            "structure": _encode_structure(treedef, where), "leaves": records}
    try:
        meta["sha256"] = _checksum(meta, members)
        meta_bytes = _canonical_json(meta)
    except (TypeError, ValueError) as e:
        raise _errors.BpjaxTypeError(where, f"metadata and model must be JSON-serialisable "
                                            f"(str keys, finite numbers), got {metadata!r}: {e}") from None
    _atomic_write(path, members, meta_bytes)
    return path


def _atomic_write(path: str, members, meta_bytes: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        with open(tmp, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for i, data in enumerate(members):
                    zf.writestr(zipfile.ZipInfo(f"leaf_{i:05d}.npy", _ZIP_DATE), data)
                zf.writestr(zipfile.ZipInfo(_META, _ZIP_DATE), meta_bytes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- load


def _read(path, where: str):
    """``(meta, arrays)`` from ``path``, with every integrity check; raises BpjaxError naming ``path``."""
    if not os.path.exists(path):
        raise _errors.BpjaxError(where, "no such file: expected a checkpoint written by bp.checkpoint.save")
    if os.path.isdir(path):
        raise _errors.BpjaxError(where, "expected a checkpoint file, got a directory")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if _META not in names:
                raise _errors.BpjaxError(where, f"not a bpjax checkpoint: the zip has no {_META} member "
                                                f"(found {sorted(names)[:5]})")
            meta = json.loads(zf.read(_META))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise _errors.BpjaxError(where, f"not a bpjax checkpoint: expected format {FORMAT!r}")
            if meta.get("format_version") != FORMAT_VERSION:
                raise _errors.BpjaxError(where, f"expected checkpoint format version {FORMAT_VERSION}, got "
                                                f"{meta.get('format_version')!r} (written by bpjax "
                                                f"{meta.get('bpjax_version')})")
            members = [zf.read(f"leaf_{i:05d}.npy") for i in range(len(meta["leaves"]))]
    except _errors.BpjaxError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, EOFError, OSError, ValueError,
            UnicodeDecodeError) as e:
        raise _errors.BpjaxError(where, f"corrupted or truncated checkpoint (expected a bpjax .npz zip): "
                                        f"{type(e).__name__}: {e}") from None
    found = _checksum(meta, members)
    if found != meta.get("sha256"):
        raise _errors.BpjaxError(where, f"checksum mismatch, the file is corrupted: expected sha256 "
                                        f"{meta.get('sha256')}, got {found}")
    try:
        arrays = [np.lib.format.read_array(io.BytesIO(m), allow_pickle=False) for m in members]
    except ValueError as e:  # e.g. an object array: never unpickled
        raise _errors.BpjaxError(where, f"unreadable array member (expected plain .npy data): {e}") from None
    return meta, arrays


def read_metadata(path) -> dict:
    """The metadata record of the checkpoint at ``path`` (verified): ``bpjax_version``, ``model``,
    ``metadata`` (the user dict given to :func:`save`), ``leaves`` (path, dtype, shape per leaf)."""
    path = os.fspath(path)
    meta, _ = _read(path, f"checkpoint.read_metadata({path})")
    return {k: meta[k] for k in ("bpjax_version", "model", "metadata", "leaves", "format_version")}


def _like_record(leaf):
    """``(kind, dtype str, shape)`` that ``leaf`` of a ``like`` tree expects."""
    if isinstance(leaf, (bool, int, float)) and not isinstance(leaf, np.generic):
        return type(leaf).__name__, None, ()
    if _is_key(leaf):
        return "key", str(leaf.dtype), tuple(leaf.shape)
    return "array", str(jnp.dtype(leaf.dtype)) if hasattr(leaf, "dtype") else str(np.asarray(leaf).dtype), \
        tuple(np.shape(leaf))


def restore(path, *, like: Any = None):
    """Read the checkpoint at ``path``.

    Args:
      path: a file written by :func:`save`.
      like: a tree of the expected structure (e.g. freshly initialised params and optimiser state;
        leaves may be arrays, ``jax.ShapeDtypeStruct`` or Python numbers). When given, every leaf
        path, shape and dtype is checked and the result has exactly ``like``'s structure.

    Returns:
      The saved tree: ``like``'s structure, or nested dicts/lists/tuples without ``like``.

    Raises:
      BpjaxError: a missing, truncated, corrupted or foreign file, or a tree that does not match
        ``like`` (naming the leaf path, the expected and the found shape/dtype).
    """
    path = os.fspath(path)
    where = f"checkpoint.restore({path})"
    meta, arrays = _read(path, where)
    records = meta["leaves"]
    if like is None:
        values = iter([_from_numpy(a, r) for a, r in zip(arrays, records)])
        return _decode_structure(meta["structure"], values)
    like_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    want = [jax.tree_util.keystr(p) for p, _ in like_leaves]
    have = [r["path"] for r in records]
    if want != have:
        missing = [p for p in want if p not in have]
        extra = [p for p in have if p not in want]
        listed = lambda paths: " ".join(paths[:5]) + (" ..." if len(paths) > 5 else "") or "none"  # noqa: E731
        raise _errors.BpjaxError(where, f"the checkpoint does not match `like`: expected {len(want)} leaves, "
                                        f"found {len(have)}; in `like` only: {listed(missing)}; in the file only: "
                                        f"{listed(extra)}" + ("" if missing or extra else " (same paths, other order)"))
    out = []
    for (_, leaf), arr, rec in zip(like_leaves, arrays, records):
        kind, dtype, shape = _like_record(leaf)
        if kind != rec["kind"]:
            raise _errors.BpjaxTypeError(where, f"leaf {rec['path']}: expected a {kind} (as in `like`), "
                                                f"found a {rec['kind']} in the file")
        if dtype is not None and (dtype != rec["dtype"] or shape != tuple(rec["shape"])):
            raise _errors.BpjaxError(where, f"leaf {rec['path']}: expected {dtype}{list(shape)} (as in `like`), "
                                            f"found {rec['dtype']}{rec['shape']} in the file")
        out.append(_from_numpy(arr, rec))
    return jax.tree_util.tree_unflatten(treedef, out)
