"""A checkpoint's contents: tree structure <-> JSON, leaves <-> ``.npy`` arrays, and their SHA-256 checksum."""

from __future__ import annotations

import collections
import hashlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import errors

FORMAT = "bpjax-checkpoint"
"""The ``format`` field of every checkpoint's metadata record; a file without it is not read."""
FORMAT_VERSION = 1
"""The version of the checkpoint format this bpjax writes and reads; a file of another version is refused."""
META = "bpjax.json"
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def check_format(where: str, meta) -> None:
    """Raise unless ``meta`` is a bpjax record of this format version."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise errors.BpjaxError(where, f"not a bpjax checkpoint: expected format {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise errors.BpjaxError(where, f"expected checkpoint format version {FORMAT_VERSION}, got "
                                       f"{meta.get('format_version')!r} (written by bpjax "
                                       f"{meta.get('bpjax_version')})")


def is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def is_number(x) -> bool:
    return isinstance(x, (bool, int, float)) and not isinstance(x, np.generic)


def leaf_label(path: str) -> str:
    return path or "(the whole tree)"


# ---------------------------------------------------------------- tree structure <-> JSON


def encode_structure(treedef):
    """A JSON description of ``treedef``: ``"*"`` for a leaf, else a one-key dict per node kind."""
    if treedef.num_leaves == 1 and treedef.num_nodes == 1:
        return "*"
    typ, aux = treedef.node_data()
    kids = [encode_structure(c) for c in treedef.children()]
    if typ is type(None):
        return None
    if typ in (dict, collections.OrderedDict, collections.defaultdict):
        keys = aux[1] if typ is collections.defaultdict else aux  # defaultdict: (default_factory, keys)
        for k in keys:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise errors.BpjaxTypeError("tree", f"dict keys must be str or int to be saved, got {k!r} "
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


def decode_structure(spec, leaves, path: str, plain: list):
    """Rebuild plain containers from :func:`encode_structure`'s output, taking leaves in order.

    Appends ``(path, saved type, plain type)`` to ``plain`` for every container that was not a
    dict, list, tuple or None when saved.
    """
    if spec == "*":
        return next(leaves)
    if spec is None:
        return None
    if "namedtuple" in spec:  # a key path names a field .mu, a dict key ['mu']
        plain.append((path, spec["namedtuple"], "dict"))
        return {k: decode_structure(v, leaves, f"{path}.{k}", plain) for k, v in spec["fields"]}
    if "dict" in spec:
        if "type" in spec:
            plain.append((path, spec["type"], "dict"))
        return {k: decode_structure(v, leaves, f"{path}[{k!r}]", plain) for k, v in spec["dict"]}
    if "tuple" in spec:
        return tuple(decode_structure(v, leaves, f"{path}[{i}]", plain) for i, v in enumerate(spec["tuple"]))
    if "node" in spec:
        plain.append((path, spec["node"], "list"))
    return [decode_structure(v, leaves, f"{path}[{i}]", plain)
            for i, v in enumerate(spec.get("list", spec.get("children")))]


# ---------------------------------------------------------------- leaves <-> arrays


def spans_processes(leaf) -> bool:
    """Whether ``leaf`` is a ``jax.Array`` split over the devices of several processes: no process holds all of
    it (not fully addressable, not fully replicated), so none can read it whole without a gather.

    Examples:
      >>> bp.checkpoint.spans_processes(jnp.ones(3))                 # one process holds all of it
      False
    """
    return isinstance(leaf, jax.Array) and not leaf.is_fully_addressable and not leaf.is_fully_replicated


def encode_leaf(path: str, leaf):
    """``(value to store, leaf record)`` for one leaf, the value still where it lives: a Python number as a 0-d
    numpy array, a typed PRNG key as its key data, an array as it is (a ``jax.Array`` on its devices)."""
    label = leaf_label(path)
    if is_number(leaf):
        kind = type(leaf).__name__
        if kind == "int" and not _INT64[0] <= leaf <= _INT64[1]:
            raise errors.BpjaxError(f"leaf {label}", f"expected a Python int in int64's range "
                                                     f"[-2**63, 2**63 - 1], got {leaf}")
        arr: np.ndarray = np.asarray(leaf, {"bool": np.bool_, "int": np.int64, "float": np.float64}[kind])
        return arr, {"path": path, "kind": kind, "dtype": str(arr.dtype), "shape": []}
    if not errors.is_concrete(leaf):
        raise errors.BpjaxTypeError(f"leaf {label}", f"expected a concrete array, got a traced value "
                                                     f"({type(leaf).__name__}): save runs outside jax.jit/grad/vmap, "
                                                     f"on the arrays a jitted function returns")
    if isinstance(leaf, jax.Array) and leaf.is_deleted():
        raise errors.BpjaxError(f"leaf {label}", "expected a live array, got one whose buffer has been deleted "
                                                 "or donated (e.g. by make_step(donate=True)): save the arrays the "
                                                 "donating call returned")
    if is_key(leaf):
        return jax.random.key_data(leaf), {"path": path, "kind": "key", "impl": str(jax.random.key_impl(leaf)),
                                           "dtype": str(leaf.dtype), "shape": list(np.shape(leaf))}
    if not isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
        hint = ("; strings and other records belong in metadata=" if isinstance(leaf, str) else
                "; save the params or optimizer state, not the model or optimizer" if callable(leaf) else "")
        raise errors.BpjaxTypeError(f"leaf {label}", f"expected an array, PRNG key or Python number, "
                                                     f"got {type(leaf).__name__}{hint}")
    dtype = np.dtype(leaf.dtype)
    if dtype.hasobject or dtype.isbuiltin == 0:  # objects, raw void and structured dtypes
        raise errors.BpjaxTypeError(f"leaf {label}", f"dtype {dtype} cannot be saved without pickle")
    return leaf, {"path": path, "kind": "array", "dtype": str(dtype), "shape": list(np.shape(leaf))}


def to_numpy(path: str, leaf):
    """``(numpy array to store in the .npz, leaf record)`` for one leaf."""
    value, record = encode_leaf(path, leaf)
    if spans_processes(value):
        raise errors.BpjaxError(f"leaf {leaf_label(path)}", f"a jax.Array split over the devices of several "
                                                            f"processes ({value.sharding}) cannot go into one .npz "
                                                            f"file without a full gather: save with "
                                                            f"backend=\"orbax\" (every process writes its own "
                                                            f"shards; install it with pip install -e \".[orbax]\")")
    arr = np.asarray(value)
    if record["kind"] == "array" and arr.dtype.isbuiltin == 2:  # bfloat16, float8, int4: raw bits, viewed back
        if arr.dtype.itemsize not in (1, 2, 4, 8):
            raise errors.BpjaxTypeError(f"leaf {leaf_label(path)}", f"dtype {arr.dtype} cannot be saved")
        arr = arr.view(f"u{arr.dtype.itemsize}")
    return arr, record


def decode_leaf(value, record: dict):
    """The leaf that ``record`` describes, from its stored ``value`` (a numpy array, or a ``jax.Array`` already
    placed on its devices)."""
    kind = record["kind"]
    if kind in ("bool", "int", "float"):
        return {"bool": bool, "int": int, "float": float}[kind](np.asarray(value).item())
    if kind == "key":
        return jax.random.wrap_key_data(jnp.asarray(value), impl=record["impl"])
    if str(value.dtype) != record["dtype"]:
        value = value.view(jnp.dtype(record["dtype"]))
    if jax.dtypes.canonicalize_dtype(value.dtype) != value.dtype:
        return value  # e.g. float64 without x64: keep the numpy array rather than truncate it
    return jnp.asarray(value)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def checksum(meta: dict, members) -> str:
    h = hashlib.sha256(canonical_json({k: v for k, v in meta.items() if k != "sha256"}))
    for data in members:
        h.update(data)
    return h.hexdigest()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
