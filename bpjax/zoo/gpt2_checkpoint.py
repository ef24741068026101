"""GPT-2 checkpoints in and out: a Hugging Face ``save_pretrained`` folder <-> a :func:`~bpjax.zoo.gpt` and its params.

A folder holds ``config.json`` (a ``GPT2Config``) and ``model.safetensors`` (or the shards that
``model.safetensors.index.json`` lists). Both directions use the ``safetensors`` package's numpy
API: no torch, nothing downloaded. The tensors map one to one onto the params (Hugging Face's
``Conv1D`` keeps ``W`` as ``(in, out)`` with ``y = x @ W + b``, as bpjax's ``Dense`` does)::

    wte.weight (V, D)                    params[0]["E"]
    wpe.weight (context, D)              params[1]["P"]
    h.{l}.ln_1.weight, .bias             block[0][0]["scale"], ["b"]         block = params[3 + l]
    h.{l}.attn.c_attn.weight (D, 3D)     block[0][1]["Wq" | "Wk" | "Wv"]     (columns 0:D, D:2D, 2D:3D)
    h.{l}.attn.c_attn.bias (3D,)         block[0][1]["bq" | "bk" | "bv"]
    h.{l}.attn.c_proj.weight, .bias      block[0][1]["Wo"], ["bo"]
    h.{l}.ln_2.weight, .bias             block[1][0]["scale"], ["b"]
    h.{l}.mlp.c_fc.weight, .bias         block[1][1]["W"], ["b"]
    h.{l}.mlp.c_proj.weight, .bias       block[1][3]["W"], ["b"]
    ln_f.weight, .bias                   params[-2]["scale"], ["b"]
    lm_head.weight                       tied to wte: params[-1] is {"W": ()}

Names may carry ``GPT2LMHeadModel``'s prefix ``transformer.`` (written so here). The causal-mask
buffers of old checkpoints (``h.{l}.attn.bias``, ``.masked_bias``) are not weights and are skipped.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import errors
from bpjax.core import Layer, check_model
from bpjax.zoo.transformer import gpt, gpt_config

_PREFIX = "transformer."
_WEIGHTS, _INDEX = "model.safetensors", "model.safetensors.index.json"

# config field -> (GPT2Config's default, the values bpjax's gpt represents, what that means)
_FIXED = {
    "model_type": ("gpt2", ("gpt2",), "a GPT-2"),
    "activation_function": ("gelu_new", ("gelu_new", "gelu_pytorch_tanh", "gelu"),
                            "the tanh GELU (gelu_new, gelu_pytorch_tanh) or the exact one (gelu)"),
    "layer_norm_epsilon": (1e-5, (1e-5,), "bpjax's LayerNorm eps"),
    "scale_attn_weights": (True, (True,), "scores divided by sqrt(head width)"),
    "scale_attn_by_inverse_layer_idx": (False, (False,), "the same scale in every layer"),
    "reorder_and_upcast_attn": (False, (False,), "the attention computed in the params' dtype"),
    "add_cross_attention": (False, (False,), "a decoder without cross-attention"),
    "tie_word_embeddings": (True, (True,), "the output projection tied to the token embedding"),
}
_TANH = ("gelu_new", "gelu_pytorch_tanh")


def _layout(num_layers: int, D: int):
    """``(name, path into the params, columns)`` for every tensor; ``columns``: the slice of ``c_attn``'s
    ``3D`` outputs that one of ``q, k, v`` takes, else None."""
    rows: list[tuple[str, tuple, slice | None]] = [("wte.weight", (0, "E"), None), ("wpe.weight", (1, "P"), None)]
    for l in range(num_layers):
        h, b = f"h.{l}.", 3 + l
        rows += [(h + "ln_1.weight", (b, 0, 0, "scale"), None), (h + "ln_1.bias", (b, 0, 0, "b"), None)]
        for i, c in enumerate("qkv"):
            cols = slice(i * D, (i + 1) * D)
            rows += [(h + "attn.c_attn.weight", (b, 0, 1, f"W{c}"), cols),
                     (h + "attn.c_attn.bias", (b, 0, 1, f"b{c}"), cols)]
        rows += [(h + "attn.c_proj.weight", (b, 0, 1, "Wo"), None), (h + "attn.c_proj.bias", (b, 0, 1, "bo"), None),
                 (h + "ln_2.weight", (b, 1, 0, "scale"), None), (h + "ln_2.bias", (b, 1, 0, "b"), None),
                 (h + "mlp.c_fc.weight", (b, 1, 1, "W"), None), (h + "mlp.c_fc.bias", (b, 1, 1, "b"), None),
                 (h + "mlp.c_proj.weight", (b, 1, 3, "W"), None), (h + "mlp.c_proj.bias", (b, 1, 3, "b"), None)]
    return rows + [("ln_f.weight", (3 + num_layers, "scale"), None), ("ln_f.bias", (3 + num_layers, "b"), None)]


def _path(key_path) -> tuple:
    """A ``jax.tree_util`` key path as plain indices and dict keys."""
    return tuple(getattr(k, "idx", getattr(k, "key", None)) for k in key_path)


def _read_config(folder: str) -> dict:
    """``config.json`` of ``folder``, every field that the GPT fixes checked against what it represents."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise errors.BpjaxError("load_gpt2", f"{folder} holds no config.json; expected a folder written by "
                                             f"save_pretrained (config.json and {_WEIGHTS})")
    with open(path) as f:
        config = json.load(f)
    for field, (default, supported, meaning) in _FIXED.items():
        value = config.get(field, default)
        if value not in supported:
            raise errors.BpjaxError("load_gpt2", f"{path}: config field {field}={value!r} cannot be represented; "
                                                 f"bpjax's gpt supports {field} in {list(supported)} ({meaning})")
    for field in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        if not isinstance(config.get(field), int):
            raise errors.BpjaxError("load_gpt2", f"{path}: config field {field} must be an int, got "
                                                 f"{config.get(field)!r}")
    return config


def _read_tensors(folder: str) -> dict:
    """Every tensor of the folder as a numpy array, names without the ``transformer.`` prefix."""
    from safetensors import safe_open

    index = os.path.join(folder, _INDEX)
    if os.path.isfile(os.path.join(folder, _WEIGHTS)):
        files = [_WEIGHTS]
    elif os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        raise errors.BpjaxError("load_gpt2", f"{folder} holds neither {_WEIGHTS} nor {_INDEX}; expected a folder "
                                             f"written by save_pretrained (safe_serialization, the default)")
    tensors = {}
    for file in files:
        with safe_open(os.path.join(folder, file), framework="np") as f:
            for name in f.keys():
                try:
                    tensors[name.removeprefix(_PREFIX)] = f.get_tensor(name)
                except (TypeError, ValueError) as e:  # a dtype numpy (with jax's ml_dtypes) cannot hold
                    raise errors.BpjaxError("load_gpt2", f"{file}: tensor {name} of dtype "
                                                         f"{f.get_slice(name).get_dtype()} cannot be read as numpy "
                                                         f"({e}); expected a float dtype: F16, BF16, F32, F64") \
                        from None
    return tensors


def load_gpt2(folder, *, dtype=None, dropout: float | None = None) -> tuple[Layer, tuple]:
    """A local GPT-2 checkpoint (``save_pretrained`` of ``transformers``' ``GPT2LMHeadModel``) as ``(model, params)``.

    ``model`` is :func:`~bpjax.zoo.gpt` with the checkpoint's configuration: ``vocab_size``,
    ``n_positions`` (the context), ``n_embd``, ``n_layer``, ``n_head``, ``n_inner``, the GELU of
    ``activation_function``, the three dropout rates and ``initializer_range``; ``params`` hold its
    tensors (see the module's table). A configuration the model cannot represent is refused, naming
    the field, its value and what is supported: another activation, ``scale_attn_by_inverse_layer_idx``,
    ``reorder_and_upcast_attn``, cross-attention, an output projection not tied to the embedding
    (by the config or by an ``lm_head.weight`` that differs from ``wte.weight``), unknown tensors.

    Args:
      folder: the checkpoint folder (``config.json``, ``model.safetensors`` or its shards).
      dtype: the params' dtype; default the stored one (F16, BF16, F32 or F64; float64 needs
        ``jax_enable_x64``).
      dropout: one drop probability for the embeddings, the attention and the residuals; default the
        config's ``embd_pdrop``, ``attn_pdrop``, ``resid_pdrop`` (GPT-2: 0.1 each, which makes the
        model contextual); ``0.0`` gives a simple model, e.g. for evaluation and :func:`~bpjax.zoo.generate`.

    Returns:
      ``(model, params)``.

    Examples:
      >>> import os, tempfile
      >>> model = bp.zoo.gpt(vocab=11, context=8, features=16, num_layers=1, num_heads=2)
      >>> folder = os.path.join(tempfile.mkdtemp(), "tiny-gpt2")
      >>> bp.zoo.save_gpt2(folder, model, model.init(jax.random.key(0), (8,))[1])
      >>> loaded, params = bp.zoo.load_gpt2(folder)     # a folder of save_pretrained, e.g. Hugging Face's gpt2
      >>> loaded.name == model.name, bp.zoo.gpt_config(loaded)["context"]
      (True, 8)
    """
    folder = os.fspath(folder)
    config = _read_config(folder)
    tensors = _read_tensors(folder)
    rates = [config.get(k, 0.1) if dropout is None else dropout for k in ("embd_pdrop", "attn_pdrop", "resid_pdrop")]
    D, L = config["n_embd"], config["n_layer"]
    model = gpt(config["vocab_size"], context=config["n_positions"], features=D, num_layers=L,
                num_heads=config["n_head"], mlp_features=config.get("n_inner") or 4 * D,
                approximate_gelu=config.get("activation_function", "gelu_new") in _TANH, embed_dropout=rates[0],
                attention_dropout=rates[1], residual_dropout=rates[2], stddev=config.get("initializer_range", 0.02),
                dtype=dtype)
    head = tensors.pop("lm_head.weight", None)
    if head is not None and not np.array_equal(head, tensors.get("wte.weight", np.zeros(0))):
        raise errors.BpjaxError("load_gpt2", f"{folder}: lm_head.weight differs from wte.weight; bpjax's gpt ties "
                                             f"the output projection to the token embedding (tie_word_embeddings)")
    for name in [n for n in tensors if n.endswith((".attn.bias", ".attn.masked_bias"))]:
        del tensors[name]                                  # old checkpoints' causal-mask buffers, not weights
    values = {}
    for name, path, cols in _layout(L, D):
        if name not in tensors:
            raise errors.BpjaxError("load_gpt2", f"{folder}: the checkpoint has no tensor {name}, expected for a "
                                                 f"GPT-2 of {L} layers (config.json)")
        values[path] = tensors[name] if cols is None else tensors[name][..., cols]
    unknown = sorted(set(tensors) - {name for name, _, _ in _layout(L, D)})
    if unknown:
        raise errors.BpjaxError("load_gpt2", f"{folder}: tensors {unknown[:6]} have no place in a GPT2LMHeadModel "
                                             f"of {L} layers (a model with another head, or cross-attention?)")

    def leaf(key_path, like):
        a = values[_path(key_path)]
        if a.shape != like.shape:
            raise errors.BpjaxError("load_gpt2", f"{folder}: the tensor for params{jax.tree_util.keystr(key_path)} "
                                                 f"has shape {a.shape}, expected {like.shape} from config.json")
        return jnp.asarray(a, dtype)

    shapes = jax.eval_shape(lambda k: model.init(k, (config["n_positions"],))[1], jax.random.key(0))
    return model, jax.tree_util.tree_map_with_path(leaf, shapes)


def save_gpt2(folder, model: Layer, params) -> None:
    """Write a :func:`~bpjax.zoo.gpt`'s params as a GPT-2 checkpoint that ``GPT2LMHeadModel.from_pretrained`` reads.

    ``folder`` (created when missing) gets ``config.json`` (the model's configuration in
    ``GPT2Config``'s fields, ``dtype`` the params') and ``model.safetensors`` (names as
    ``save_pretrained`` writes them, ``lm_head.weight`` left to the tie). :func:`load_gpt2` reads
    it back to the same params.

    Args:
      folder: the folder to write.
      model: a model built by :func:`~bpjax.zoo.gpt` (or returned by :func:`load_gpt2`), with biases.
      params: its params.

    Examples:
      >>> import os, tempfile
      >>> model = bp.zoo.gpt(vocab=11, context=8, features=16, num_layers=1, num_heads=2)
      >>> _, params = model.init(jax.random.key(0), (8,))
      >>> folder = os.path.join(tempfile.mkdtemp(), "tiny-gpt2")
      >>> bp.zoo.save_gpt2(folder, model, params)
      >>> sorted(os.listdir(folder))                                 # GPT2LMHeadModel.from_pretrained(folder) reads it
      ['config.json', 'model.safetensors']
    """
    from safetensors.numpy import save_file

    check_model(model, "save_gpt2")
    config = gpt_config(model)
    if config is None:
        raise errors.BpjaxError("save_gpt2", f"expected a model built by bpjax.zoo.gpt (or load_gpt2), got "
                                             f"{model.name}")
    if not config["bias"]:
        raise errors.BpjaxError("save_gpt2", "GPT-2 has biases in every projection: expected a gpt built with "
                                             "bias=True, got bias=False")
    D, L = config["features"], config["num_layers"]
    flat = {_path(k): np.asarray(a) for k, a in jax.tree_util.tree_leaves_with_path(params)}
    columns: dict = {}
    for name, path, _ in _layout(L, D):                  # q, k, v in order: c_attn's columns
        if path not in flat:
            raise errors.BpjaxError("save_gpt2", f"params do not match {model.name}: no array at params{list(path)}")
        columns.setdefault(name, []).append(flat[path])
    tensors = {_PREFIX + name: np.ascontiguousarray(np.concatenate(parts, -1)) for name, parts in columns.items()}
    dtypes = sorted({str(a.dtype) for a in tensors.values()})
    if len(dtypes) != 1:
        raise errors.BpjaxError("save_gpt2", f"expected params of one dtype, got {dtypes}")
    hf = {field: fixed[0] for field, fixed in _FIXED.items()}  # GPT-2's own values of the fields the GPT fixes
    hf.update({"architectures": ["GPT2LMHeadModel"], "vocab_size": config["vocab"],
               "n_positions": config["context"], "n_embd": D, "n_layer": L, "n_head": config["num_heads"],
               "n_inner": config["mlp_features"],
               "activation_function": "gelu_new" if config["approximate_gelu"] else "gelu",
               "embd_pdrop": config["embed_dropout"], "attn_pdrop": config["attention_dropout"],
               "resid_pdrop": config["residual_dropout"], "initializer_range": config["stddev"],
               "bos_token_id": config["vocab"] - 1, "eos_token_id": config["vocab"] - 1,  # GPT-2's: the last id
               "dtype": dtypes[0]})
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
    save_file(tensors, os.path.join(folder, _WEIGHTS), metadata={"format": "pt"})
