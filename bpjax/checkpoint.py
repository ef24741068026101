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
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import math
import os
import re
import secrets
import warnings
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
_TEMP = re.compile(r"\.(?P<name>.+)\.tmp-\d+-[0-9a-f]+")  # a whole basename written by _create_temp
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


class PlainTreeWarning(UserWarning):
    """:func:`restore` without ``like`` returned NamedTuples or other pytree nodes as plain dicts/lists.

    Make it an error with ``warnings.simplefilter("error", bp.checkpoint.PlainTreeWarning)``.
    """


def _version() -> str:
    import bpjax
    return getattr(bpjax, "__version__", "unknown")


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _is_number(x) -> bool:
    return isinstance(x, (bool, int, float)) and not isinstance(x, np.generic)


def _label(path: str) -> str:
    return path or "(the whole tree)"


# ---------------------------------------------------------------- arguments


def _file_path(fn: str, path, tree: Any = None) -> str:
    """``path`` as a str, else a BpjaxError naming ``checkpoint.<fn>``'s ``path`` argument."""
    where = f"checkpoint.{fn}"
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        got = repr(path) if path is None or _is_number(path) else type(path).__name__
        swapped = fn == "save" and isinstance(tree, (str, bytes, os.PathLike))
        hint = "; the arguments look swapped: it is save(path, tree)" if swapped else ""
        raise _errors.BpjaxTypeError(where, f"path: expected a file path (str or os.PathLike), got {got}{hint}")
    if not path:
        raise _errors.BpjaxError(where, "path: expected a file path, got an empty string")
    if path.endswith(("/", os.sep)):
        raise _errors.BpjaxError(f"{where}({path})", "expected a file path, got a directory path (it ends with a "
                                                     "separator)")
    return path


def _tilde_hint(path: str) -> str:
    return "; '~' is not expanded: pass os.path.expanduser(path)" if path.startswith("~") else ""


def _check_json(where: str, what: str, value) -> None:
    """Raise unless ``value`` is JSON that reads back as itself (tuples excepted: they read back as lists)."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _errors.BpjaxError(where, f"{what}: expected a finite number (JSON has no nan or inf), got {value}")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise _errors.BpjaxTypeError(where, f"{what}: expected str keys (JSON would read {k!r} back as "
                                                    f"{str(k)!r}), got the {type(k).__name__} key {k!r}")
            _check_json(where, f"{what}[{k!r}]", v)
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(where, f"{what}[{i}]", v)
        return
    hint = "; convert it with float(x), int(x) or x.tolist()" if hasattr(value, "dtype") else ""
    raise _errors.BpjaxTypeError(where, f"{what}: expected a JSON value (dict with str keys, list, str, int, "
                                        f"finite float, bool or None), got {type(value).__name__}{hint}")


def _model_name(where: str, model) -> Optional[str]:
    from bpjax.core import Layer
    if model is None or isinstance(model, str):
        return model
    if isinstance(model, Layer):
        return model.name
    raise _errors.BpjaxTypeError(where, f"model: expected a bp.Layer or a description str, got "
                                        f"{type(model).__name__}")


# ---------------------------------------------------------------- tree structure <-> JSON


def _encode_structure(treedef, where: str):
    """A JSON description of ``treedef``: ``"*"`` for a leaf, else a one-key dict per node kind."""
    if treedef.num_leaves == 1 and treedef.num_nodes == 1:
        return "*"
    typ, aux = treedef.node_data()
    kids = [_encode_structure(c, where) for c in treedef.children()]
    if typ is type(None):
        return None
    if typ in (dict, collections.OrderedDict, collections.defaultdict):
        keys = aux[1] if typ is collections.defaultdict else aux  # defaultdict: (default_factory, keys)
        for k in keys:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise _errors.BpjaxTypeError(where, f"dict keys must be str or int to be saved, got {k!r} "
                                                    f"({type(k).__name__})")
        spec: dict = {"dict": [[k, kid] for k, kid in zip(keys, kids)]}
        if typ is not dict:
            spec["type"] = typ.__name__
        return spec
    if typ in (tuple, list):
        return {typ.__name__: kids}
    if issubclass(typ, tuple) and hasattr(typ, "_fields"):
        return {"namedtuple": typ.__name__, "fields": [[f, kid] for f, kid in zip(typ._fields, kids)]}
    return {"node": f"{typ.__module__}.{typ.__qualname__}", "children": kids}


def _decode_structure(spec, leaves, path: str, plain: list):
    """Rebuild plain containers from :func:`_encode_structure`'s output, taking leaves in order.

    Appends ``(path, saved type, plain type)`` to ``plain`` for every container that was not a
    dict, list, tuple or None when saved.
    """
    if spec == "*":
        return next(leaves)
    if spec is None:
        return None
    if "namedtuple" in spec:  # a key path names a field .mu, a dict key ['mu']
        plain.append((path, spec["namedtuple"], "dict"))
        return {k: _decode_structure(v, leaves, f"{path}.{k}", plain) for k, v in spec["fields"]}
    if "dict" in spec:
        if "type" in spec:
            plain.append((path, spec["type"], "dict"))
        return {k: _decode_structure(v, leaves, f"{path}[{k!r}]", plain) for k, v in spec["dict"]}
    if "tuple" in spec:
        return tuple(_decode_structure(v, leaves, f"{path}[{i}]", plain) for i, v in enumerate(spec["tuple"]))
    if "node" in spec:
        plain.append((path, spec["node"], "list"))
    return [_decode_structure(v, leaves, f"{path}[{i}]", plain)
            for i, v in enumerate(spec.get("list", spec.get("children")))]


def _warn_plain(where: str, plain: list) -> None:
    shown = ", ".join(f"{_label(p)} ({name} -> {kind})" for p, name, kind in plain[:4])
    warnings.warn(f"{where}: without `like`, {len(plain)} saved container(s) come back as plain dicts/lists: "
                  f"{shown}{' ...' if len(plain) > 4 else ''}. Fine to inspect, not to train with: optax fails on "
                  f"a plain dict (\"'dict' object has no attribute 'mu'\"). Pass `like` with the same structure, "
                  f"e.g. like=optimizer.init(params) for an optimizer state (or a dict holding it)",
                  PlainTreeWarning, stacklevel=3)


# ---------------------------------------------------------------- leaves <-> arrays


def _to_numpy(where: str, path: str, leaf):
    """``(array to store, leaf record)`` for one leaf."""
    label = _label(path)
    if _is_number(leaf):
        kind = type(leaf).__name__
        if kind == "int" and not _INT64[0] <= leaf <= _INT64[1]:
            raise _errors.BpjaxError(where, f"leaf {label}: expected a Python int in int64's range "
                                            f"[-2**63, 2**63 - 1], got {leaf}")
        arr: np.ndarray = np.asarray(leaf, {"bool": np.bool_, "int": np.int64, "float": np.float64}[kind])
        return arr, {"path": path, "kind": kind, "dtype": str(arr.dtype), "shape": []}
    if not _errors.is_concrete(leaf):
        raise _errors.BpjaxTypeError(where, f"leaf {label}: expected a concrete array, got a traced value "
                                            f"({type(leaf).__name__}): save runs outside jax.jit/grad/vmap, on the "
                                            f"arrays a jitted function returns")
    if isinstance(leaf, jax.Array) and leaf.is_deleted():
        raise _errors.BpjaxError(where, f"leaf {label}: expected a live array, got one whose buffer has been "
                                        f"deleted or donated (e.g. by make_step(donate=True)): save the arrays "
                                        f"the donating call returned")
    if _is_key(leaf):
        data = np.asarray(jax.random.key_data(leaf))
        return data, {"path": path, "kind": "key", "impl": str(jax.random.key_impl(leaf)),
                      "dtype": str(leaf.dtype), "shape": list(np.shape(leaf))}
    if not isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
        hint = ("; strings and other records belong in metadata=" if isinstance(leaf, str) else
                "; save the params or optimizer state, not the model or optimizer" if callable(leaf) else "")
        raise _errors.BpjaxTypeError(where, f"leaf {label}: expected an array, PRNG key or Python number, "
                                            f"got {type(leaf).__name__}{hint}")
    arr = np.asarray(leaf)
    if arr.dtype.hasobject or arr.dtype.isbuiltin == 0:  # objects, raw void and structured dtypes
        raise _errors.BpjaxTypeError(where, f"leaf {label}: dtype {arr.dtype} cannot be saved without pickle")
    record = {"path": path, "kind": "array", "dtype": str(arr.dtype), "shape": list(arr.shape)}
    if arr.dtype.isbuiltin == 2:  # bfloat16, float8, int4: store the raw bits, view them back on load
        if arr.dtype.itemsize not in (1, 2, 4, 8):
            raise _errors.BpjaxTypeError(where, f"leaf {label}: dtype {arr.dtype} cannot be saved")
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
      path: the file to write, a str or ``os.PathLike`` (``.npz`` by convention; no suffix is added).
        Its directory must exist.
      tree: any pytree of arrays, typed PRNG keys and Python numbers, e.g.
        ``{"params": params, "opt_state": opt_state, "state": state, "step": 100, "key": key}``.
        Concrete values only (not inside ``jax.jit``).
      metadata: a dict of JSON values with str keys (finite numbers; tuples read back as lists),
        stored beside the arrays: read it with :func:`read_metadata`.
      model: a :class:`bpjax.Layer` (its name is recorded) or a description string.

    Raises:
      BpjaxError: a path that is not a str/PathLike, an unsavable leaf, metadata that is not JSON,
        a missing directory, or a failed write (naming the path, the argument and what it got).
    """
    path = _file_path("save", path, tree)
    where = f"checkpoint.save({path})"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        found = "is a file" if os.path.exists(directory) else "does not exist"
        raise _errors.BpjaxError(where, f"expected an existing directory, {directory!r} {found}{_tilde_hint(path)}")
    if os.path.isdir(path):
        raise _errors.BpjaxError(where, "expected a file path, got a directory")
    if metadata is not None and not isinstance(metadata, dict):
        raise _errors.BpjaxTypeError(where, f"metadata: expected a dict, got {type(metadata).__name__}")
    _check_json(where, "metadata", metadata)
    name = _model_name(where, model)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    arrays, records = [], []
    for p, leaf in leaves:
        arr, rec = _to_numpy(where, jax.tree_util.keystr(p), leaf)
        arrays.append(arr)
        records.append(rec)
    members = [_npy_bytes(a) for a in arrays]
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "bpjax_version": _version(),
            "model": name, "metadata": metadata or {},
            "structure": _encode_structure(treedef, where), "leaves": records}
    meta["sha256"] = _checksum(meta, members)
    _atomic_write(where, path, members, _canonical_json(meta))
    return path


def _create_temp(where: str, directory: str, name: str):
    """``(temp path, file open for writing)``: a new ``.<name>.tmp-<pid>-<random>`` in ``directory``.

    Created with ``O_EXCL``: a name another writer holds is never opened, a fresh one is drawn.
    """
    for _ in range(16):
        tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(8)}")
        try:
            return tmp, open(tmp, "xb")
        except FileExistsError:
            continue
    raise _errors.BpjaxError(where, f"expected a free temporary file name in {directory!r}, found 16 taken")


def _atomic_write(where: str, path: str, members, meta_bytes: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        tmp, f = _create_temp(where, directory, os.path.basename(path))
        with f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for i, data in enumerate(members):
                    zf.writestr(zipfile.ZipInfo(f"leaf_{i:05d}.npy", _ZIP_DATE), data)
                zf.writestr(zipfile.ZipInfo(_META, _ZIP_DATE), meta_bytes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise _errors.BpjaxError(where, f"could not write the checkpoint: {type(e).__name__}: "
                                            f"{e.strerror or e}") from e
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- load


def _missing_hint(path: str) -> str:
    """Likely causes of a missing file: '~', the other suffix, temporary files of unfinished saves."""
    hints = [_tilde_hint(path)] if path.startswith("~") else []
    other = path[:-4] if path.endswith(".npz") else path + ".npz"
    if os.path.isfile(other):
        hints.append(f"; {other!r} exists (save adds no suffix)")
    directory, name = os.path.split(os.path.abspath(path))
    temps = sorted(n for n in os.listdir(directory) if (m := _TEMP.fullmatch(n)) and m["name"] == name) \
        if os.path.isdir(directory) else []
    if temps:
        hints.append(f"; {len(temps)} temporary file(s) of unfinished saves lie beside it ({temps[0]}"
                     f"{' ...' if len(temps) > 1 else ''}), never read")
    return "".join(hints)


def _read(path: str, where: str):
    """``(meta, arrays)`` from ``path``, with every integrity check; raises BpjaxError naming ``path``."""
    temp = _TEMP.fullmatch(os.path.basename(path))
    if temp:
        final = os.path.join(os.path.dirname(path), temp["name"])
        raise _errors.BpjaxError(where, f"expected a checkpoint, got the temporary file of a save (it may be "
                                        f"partial, so it is never read): restore {final!r}")
    if not os.path.exists(path):
        raise _errors.BpjaxError(where, "no such file: expected a checkpoint written by bp.checkpoint.save"
                                        + _missing_hint(path))
    if os.path.isdir(path):
        raise _errors.BpjaxError(where, "expected a checkpoint file, got a directory")
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise _errors.BpjaxError(where, f"expected a readable file, got {type(e).__name__}: {e.strerror or e}") \
            from None
    try:
        with fh, zipfile.ZipFile(fh) as zf:
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
    path = _file_path("read_metadata", path)
    meta, _ = _read(path, f"checkpoint.read_metadata({path})")
    return {k: meta[k] for k in ("bpjax_version", "model", "metadata", "leaves", "format_version")}


def _like_record(where: str, path: str, leaf):
    """``(kind, dtype str or None, shape)`` that ``leaf`` of a ``like`` tree expects."""
    if _is_number(leaf):
        return type(leaf).__name__, None, ()
    if _is_key(leaf):
        return "key", str(leaf.dtype), tuple(leaf.shape)
    if hasattr(leaf, "dtype") and hasattr(leaf, "shape"):  # arrays, numpy scalars, jax.ShapeDtypeStruct
        return "array", str(jnp.dtype(leaf.dtype)), tuple(leaf.shape)
    hint = "; pass the state, e.g. like=optimizer.init(params), not the optimizer or model" if callable(leaf) else ""
    raise _errors.BpjaxTypeError(where, f"like: leaf {_label(path)}: expected an array, jax.ShapeDtypeStruct, PRNG "
                                        f"key or Python number, got {type(leaf).__name__}{hint}")


def _kind_text(kind: str, dtype: str, shape) -> str:
    if kind == "array":
        return f"a {dtype}{list(shape)} array"
    if kind == "key":
        return f"a typed PRNG key {dtype}{list(shape)}"
    return f"a Python {kind}"


def _kind_mismatch(where: str, rec: dict, kind: str, dtype, shape) -> _errors.BpjaxTypeError:
    hint = ""
    if kind == "key" and rec["kind"] == "array" and rec["dtype"] == "uint32":
        hint = ("; the file holds a raw key (jax.random.PRNGKey): pass a raw key in `like`, or wrap the result "
                "with jax.random.wrap_key_data")
    elif kind == "array" and rec["kind"] == "key":
        hint = ("; the file holds a typed key (jax.random.key): pass a typed key in `like`, or take "
                "jax.random.key_data of the result")
    return _errors.BpjaxTypeError(where, f"leaf {_label(rec['path'])}: expected {_kind_text(kind, dtype, shape)} "
                                         f"(as in `like`), found {_kind_text(rec['kind'], rec['dtype'], rec['shape'])}"
                                         f" in the file{hint}")


def restore(path, *, like: Any = None):
    """Read the checkpoint at ``path``.

    Args:
      path: a file written by :func:`save` (a str or ``os.PathLike``; never one of its temporary files).
      like: a tree of the expected structure (e.g. freshly initialised params and optimiser state,
        ``like={"params": params, "opt_state": optimizer.init(params), "step": 0}``; leaves may be
        arrays, ``jax.ShapeDtypeStruct``, typed or raw PRNG keys, or Python numbers). When given,
        every leaf path, kind, shape and dtype is checked and the result has exactly ``like``'s
        structure, NamedTuples included.

    Returns:
      The saved tree: ``like``'s structure; without ``like``, nested dicts/lists/tuples, with
      NamedTuples (optax states) as dicts of their fields and other pytree nodes as lists, each
      named by a :class:`PlainTreeWarning`. To train with a restored optimizer state, pass
      ``like=optimizer.init(params)`` (or a dict holding it): optax cannot use the plain dicts.

    Raises:
      BpjaxError: a path that is not a str/PathLike, a missing, truncated, corrupted or foreign file,
        a temporary file, or a tree that does not match ``like`` (naming the leaf path, the expected
        and the found kind/shape/dtype).
    """
    path = _file_path("restore", path)
    where = f"checkpoint.restore({path})"
    meta, arrays = _read(path, where)
    records = meta["leaves"]
    if like is None:
        plain: list = []
        tree = _decode_structure(meta["structure"], iter([_from_numpy(a, r) for a, r in zip(arrays, records)]),
                                 "", plain)
        if plain:
            _warn_plain(where, plain)
        return tree
    like_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    want = [jax.tree_util.keystr(p) for p, _ in like_leaves]
    expected = [_like_record(where, p, leaf) for p, (_, leaf) in zip(want, like_leaves)]
    have = [r["path"] for r in records]
    if want != have:
        missing = [p for p in want if p not in have]
        extra = [p for p in have if p not in want]
        listed = lambda paths: " ".join(paths[:5]) + (" ..." if len(paths) > 5 else "") or "none"  # noqa: E731
        raise _errors.BpjaxError(where, f"the checkpoint does not match `like`: expected {len(want)} leaves, "
                                        f"found {len(have)}; in `like` only: {listed(missing)}; in the file only: "
                                        f"{listed(extra)}" + ("" if missing or extra else " (same paths, other order)"))
    out = []
    for (kind, dtype, shape), arr, rec in zip(expected, arrays, records):
        if kind != rec["kind"]:
            raise _kind_mismatch(where, rec, kind, dtype, shape)
        if dtype is not None and (dtype != rec["dtype"] or shape != tuple(rec["shape"])):
            raise _errors.BpjaxError(where, f"leaf {_label(rec['path'])}: expected {dtype}{list(shape)} (as in "
                                            f"`like`), found {rec['dtype']}{rec['shape']} in the file")
        out.append(_from_numpy(arr, rec))
    return jax.tree_util.tree_unflatten(treedef, out)
