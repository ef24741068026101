"""Checks of the arguments of save, restore and read_metadata: the path, the metadata record, the model."""

from __future__ import annotations

import math
import os
from typing import Any, Optional

from bpjax import errors
from bpjax.checkpoint.encoding import is_number


def file_path(fn: str, path, tree: Any = None) -> str:
    """``path`` as a str, else a BpjaxError naming ``checkpoint.<fn>``'s ``path`` argument."""
    where = f"checkpoint.{fn}"
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        got = repr(path) if path is None or is_number(path) else type(path).__name__
        swapped = fn == "save" and isinstance(tree, (str, bytes, os.PathLike))
        hint = "; the arguments look swapped: it is save(path, tree)" if swapped else ""
        raise errors.BpjaxTypeError(where, f"path: expected a file path (str or os.PathLike), got {got}{hint}")
    if not path:
        raise errors.BpjaxError(where, "path: expected a file path, got an empty string")
    if path.endswith(("/", os.sep)):
        raise errors.BpjaxError(f"{where}({path})", "expected a file path, got a directory path (it ends with a "
                                                    "separator)")
    return path


def tilde_hint(path: str) -> str:
    return "; '~' is not expanded: pass os.path.expanduser(path)" if path.startswith("~") else ""


def check_json(what: str, value) -> None:
    """Raise unless ``value`` is JSON that reads back as itself (tuples excepted: they read back as lists); the
    error's place is ``what`` (``metadata['run']``), under the caller's (:func:`bpjax.errors.context`)."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise errors.BpjaxError(what, f"expected a finite number (JSON has no nan or inf), got {value}")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise errors.BpjaxTypeError(what, f"expected str keys (JSON would read {k!r} back as {str(k)!r}), got "
                                                  f"the {type(k).__name__} key {k!r}")
            check_json(f"{what}[{k!r}]", v)
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_json(f"{what}[{i}]", v)
        return
    hint = "; convert it with float(x), int(x) or x.tolist()" if hasattr(value, "dtype") else ""
    raise errors.BpjaxTypeError(what, f"expected a JSON value (dict with str keys, list, str, int, finite float, "
                                      f"bool or None), got {type(value).__name__}{hint}")


def model_name(model) -> Optional[str]:
    from bpjax.core import Layer
    if model is None or isinstance(model, str):
        return model
    if isinstance(model, Layer):
        return model.name
    raise errors.BpjaxTypeError("model", f"expected a bp.Layer or a description str, got {type(model).__name__}")
