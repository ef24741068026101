"""Reading a checkpoint with every integrity check, and the checks of its leaves against a ``like`` tree."""

from __future__ import annotations

import io
import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import errors
from bpjax.checkpoint.arguments import tilde_hint
from bpjax.checkpoint.atomic import temporary_of
from bpjax.checkpoint.encoding import (
    META,
    check_format,
    checksum,
    decode_leaf,
    is_key,
    is_number,
    leaf_label,
)


def _missing_hint(path: str) -> str:
    """Likely causes of a missing file: '~', the other suffix, temporary files of unfinished saves."""
    hints = [tilde_hint(path)] if path.startswith("~") else []
    other = path[:-4] if path.endswith(".npz") else path + ".npz"
    if os.path.isfile(other):
        hints.append(f"; {other!r} exists (save adds no suffix)")
    directory, name = os.path.split(os.path.abspath(path))
    temps = sorted(n for n in os.listdir(directory) if temporary_of(n) == name) if os.path.isdir(directory) else []
    if temps:
        hints.append(f"; {len(temps)} temporary file(s) of unfinished saves lie beside it ({temps[0]}"
                     f"{' ...' if len(temps) > 1 else ''}), never read")
    return "".join(hints)


def read(path: str, where: str):
    """``(meta, arrays)`` from ``path``, with every integrity check; raises BpjaxError naming ``path``.

    A directory is a sharded checkpoint: its record is read and checked, its arrays are left for
    :func:`bpjax.checkpoint.sharded.read_arrays` (``arrays`` is ``None``), which places them as ``like`` says.
    """
    name = temporary_of(os.path.basename(path))
    if name is not None:
        final = os.path.join(os.path.dirname(path), name)
        what = "directory" if os.path.isdir(path) else "file"
        raise errors.BpjaxError(where, f"expected a checkpoint, got the temporary {what} of a save (it may be "
                                       f"partial, so it is never read): restore {final!r}")
    if not os.path.exists(path):
        raise errors.BpjaxError(where, "no such file: expected a checkpoint written by bp.checkpoint.save"
                                       + _missing_hint(path))
    if os.path.isdir(path):
        from bpjax.checkpoint import sharded

        return sharded.read_meta(where, path), None
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise errors.BpjaxError(where, f"expected a readable file, got {type(e).__name__}: {e.strerror or e}") \
            from None
    try:
        with fh, zipfile.ZipFile(fh) as zf:
            names = set(zf.namelist())
            if META not in names:
                raise errors.BpjaxError(where, f"not a bpjax checkpoint: the zip has no {META} member "
                                               f"(found {sorted(names)[:5]})")
            meta = json.loads(zf.read(META))
            check_format(where, meta)
            members = [zf.read(f"leaf_{i:05d}.npy") for i in range(len(meta["leaves"]))]
    except errors.BpjaxError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, EOFError, OSError, ValueError,
            UnicodeDecodeError) as e:
        raise errors.BpjaxError(where, f"corrupted or truncated checkpoint (expected a bpjax .npz zip): "
                                       f"{type(e).__name__}: {e}") from None
    found = checksum(meta, members)
    if found != meta.get("sha256"):
        raise errors.BpjaxError(where, f"checksum mismatch, the file is corrupted: expected sha256 "
                                       f"{meta.get('sha256')}, got {found}")
    try:
        arrays = [np.lib.format.read_array(io.BytesIO(m), allow_pickle=False) for m in members]
    except ValueError as e:  # e.g. an object array: never unpickled
        raise errors.BpjaxError(where, f"unreadable array member (expected plain .npy data): {e}") from None
    return meta, arrays


# ---------------------------------------------------------------- leaves against `like`


def _like_record(path: str, leaf):
    """``(kind, dtype str or None, shape)`` that ``leaf`` of a ``like`` tree expects."""
    if is_number(leaf):
        return type(leaf).__name__, None, ()
    if is_key(leaf):
        return "key", str(leaf.dtype), tuple(leaf.shape)
    if hasattr(leaf, "dtype") and hasattr(leaf, "shape"):  # arrays, numpy scalars, jax.ShapeDtypeStruct
        return "array", str(jnp.dtype(leaf.dtype)), tuple(leaf.shape)
    hint = "; pass the state, e.g. like=optimizer.init(params), not the optimizer or model" if callable(leaf) else ""
    raise errors.BpjaxTypeError(f"like: leaf {leaf_label(path)}", f"expected an array, jax.ShapeDtypeStruct, PRNG key "
                                                                  f"or Python number, got {type(leaf).__name__}{hint}")


def match_like(where: str, records: list, like):
    """``like``'s treedef, once every saved leaf (``records``) matches ``like``'s leaf path, kind, shape and dtype."""
    like_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    want = [jax.tree_util.keystr(p) for p, _ in like_leaves]
    with errors.context(where):
        expected = [_like_record(p, leaf) for p, (_, leaf) in zip(want, like_leaves)]
    have = [r["path"] for r in records]
    if want != have:
        missing = [p for p in want if p not in have]
        extra = [p for p in have if p not in want]
        listed = lambda paths: " ".join(paths[:5]) + (" ..." if len(paths) > 5 else "") or "none"  # noqa: E731
        raise errors.BpjaxError(where, f"the checkpoint does not match `like`: expected {len(want)} leaves, "
                                       f"found {len(have)}; in `like` only: {listed(missing)}; in the file only: "
                                       f"{listed(extra)}" + ("" if missing or extra else " (same paths, other order)"))
    for (kind, dtype, shape), rec in zip(expected, records):
        if kind != rec["kind"]:
            with errors.context(where):
                raise _kind_mismatch(rec, kind, dtype, shape)
        if dtype is not None and (dtype != rec["dtype"] or shape != tuple(rec["shape"])):
            raise errors.BpjaxError(where, f"leaf {leaf_label(rec['path'])}: expected {dtype}{list(shape)} (as in "
                                           f"`like`), found {rec['dtype']}{rec['shape']} in the file")
    return treedef


def _kind_text(kind: str, dtype: str, shape) -> str:
    if kind == "array":
        return f"a {dtype}{list(shape)} array"
    if kind == "key":
        return f"a typed PRNG key {dtype}{list(shape)}"
    return f"a Python {kind}"


def _kind_mismatch(rec: dict, kind: str, dtype, shape) -> errors.BpjaxTypeError:
    hint = ""
    if kind == "key" and rec["kind"] == "array" and rec["dtype"] == "uint32":
        hint = ("; the file holds a raw key (jax.random.PRNGKey): pass a raw key in `like`, or wrap the result "
                "with jax.random.wrap_key_data")
    elif kind == "array" and rec["kind"] == "key":
        hint = ("; the file holds a typed key (jax.random.key): pass a typed key in `like`, or take "
                "jax.random.key_data of the result")
    return errors.BpjaxTypeError(f"leaf {leaf_label(rec['path'])}",
                                 f"expected {_kind_text(kind, dtype, shape)} (as in `like`), found "
                                 f"{_kind_text(rec['kind'], rec['dtype'], rec['shape'])} in the file{hint}")


def decode(where: str, path: str, meta: dict, arrays, like):
    """The tree of the checkpoint read from ``path`` (``meta, arrays`` from :func:`read`) with exactly ``like``'s
    structure, every leaf checked against ``like``'s; a sharded checkpoint's leaves are read here, each into
    ``like``'s sharding."""
    records = meta["leaves"]
    treedef = match_like(where, records, like)
    if arrays is None:
        from bpjax.checkpoint import sharded

        arrays = sharded.read_arrays(where, path, meta, jax.tree.leaves(like))
    return jax.tree_util.tree_unflatten(treedef, [decode_leaf(a, r) for a, r in zip(arrays, records)])
