"""The GPT (GPT-2's layout and defaults) and its learned position embedding."""

from __future__ import annotations

import math

import jax.numpy as jnp

from bpjax import errors
from bpjax.combinators import serial
from bpjax.core import Layer
from bpjax.initializers import Initializer, initializer, param_dtype


def PositionEmbedding(context: int, *, init: Initializer = "normal", stddev: float = 0.02, dtype=None,
                      name: str | None = None) -> Layer:
    """Learned positions added to the token vectors: ``y = x + P[:T]``, ``x: (B, T, D)``, ``P: (context, D)``.

    Backward: ``dx = dy`` and ``dP[:T] = sum_b dy`` (rows ``T..context-1`` were not used: zero).

    Args:
      context: the longest sequence, ``T <= context``.
      init, stddev: initialiser of ``P`` (GPT-2: ``N(0, 0.02^2)``).
      dtype: dtype of ``P``; default the canonical float.
      name: display name (default ``PositionEmbedding(context)``).

    Examples:
      >>> layer = bp.zoo.PositionEmbedding(context=8)
      >>> out_shape, params = layer.init(jax.random.key(0), (5, 16))   # T = 5 <= context
      >>> y, _ = layer.forward(params, jnp.zeros((2, 5, 16)))
      >>> params["P"].shape, y.shape
      ((8, 16), (2, 5, 16))
    """
    context = errors.positive_int("PositionEmbedding", "context", context)
    name = name or f"PositionEmbedding({context})"
    param_dtype(name, dtype)
    p_init = initializer(init, stddev)

    def check_shape(T, D_got, D=None):
        if T > context or (D is not None and D_got != D):
            want = f"(B, T, {D}) with T <= {context}" if D is not None else f"(T, D) with T <= {context}"
            raise errors.BpjaxError(name, f"expected an input of shape {want}, got T={T} and D={D_got}")

    def init_fn(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape, key_needed=True)
        if len(input_shape) != 2:
            raise errors.BpjaxError(name, f"expected an input shape (T, D) (one sequence, no batch axis), "
                                          f"got {tuple(input_shape)}")
        check_shape(*input_shape)
        return tuple(input_shape), {"P": p_init(key, (context, int(input_shape[1])), param_dtype(name, dtype))}

    def forward(params, x):                      # x: (B, T, D)
        errors.check_floating(name, x)
        errors.check_ndim(name, x, 3, "input (B, T, D)")
        errors.check_input_dtype(name, x, params["P"])
        check_shape(x.shape[1], x.shape[2], params["P"].shape[1])
        return x + params["P"][:x.shape[1]], ()  # y = x + P[:T]

    def backward(params, residuals, dy):
        # in the forward pass this was: y = x + P[:T], so dx = dy and dP[:T] = sum over the batch of dy
        T = dy.shape[1]
        dP = jnp.zeros_like(params["P"]).at[:T].set(dy.sum(0).astype(params["P"].dtype))
        return {"P": dP}, dy

    return Layer(init_fn, forward, backward, name)


def gpt(vocab: int, *, context: int, features: int = 128, num_layers: int = 4, num_heads: int = 4,
        mlp_features: int | None = None, bias: bool = True, approximate_gelu: bool = True,
        embed_dropout: float = 0.0, attention_dropout: float = 0.0, residual_dropout: float = 0.0,
        stddev: float = 0.02, dtype=None, name: str | None = None) -> Layer:
    """A GPT with GPT-2's layout and defaults, ``ids: (B, T) -> logits: (B, T, vocab)`` with ``T <= context``::

        h = Drop(E[ids] + P[:T])                               # Embedding, PositionEmbedding, embed_dropout
        h = TransformerBlock(h)  x num_layers                  # pre-norm, causal, tanh-GELU MLP
        logits = LayerNorm(h) @ E^T                            # the output projection tied to E

    The model is ``tie(serial(Embedding, PositionEmbedding, Drop, blocks..., LayerNorm, Dense(vocab,
    bias=False)), source=(0, "E"), target=(-1, "W"), transpose=True)``: params are the serial
    model's, ``(E, P, (), block_1, ..., block_L, ln_f, {"W": ()})``, with ``()`` in place of the
    output ``W`` (``E`` gets the sum of the gradients of its two uses) and for the dropout slot
    (``Drop`` is :func:`~bpjax.layers.Dropout`, or the identity at rate 0, so the params have one
    structure whatever the rates). Each block's params are
    :func:`~bpjax.layers.TransformerBlock`'s. :func:`gpt_config` gives back these arguments, and
    :func:`~bpjax.zoo.load_gpt2` / :func:`~bpjax.zoo.save_gpt2` read and write the params as a
    Hugging Face ``GPT2LMHeadModel`` checkpoint.

    GPT-2's choices: the MLP's GELU in its tanh form (``gelu_new``); weights drawn from
    ``N(0, stddev^2)`` with ``stddev = 0.02``, except the two projections of each block back into
    the residual stream (the attention's ``Wo``, the MLP's second ``W``: GPT-2's ``c_proj``), drawn
    from ``N(0, stddev^2 / (2 num_layers))`` so that the residual stream's variance does not grow
    with depth; biases and ``LayerNorm`` start at 0 and 1. GPT-2 trains with dropout 0.1 in its
    three places; here every rate defaults to 0 (nanoGPT's choice for pre-training), which keeps
    the model a simple layer: with a rate above 0 it is contextual, and training passes ``key=``
    and ``state=bp.init_state(model, key, (context,))``.

    Args:
      vocab: number of tokens ``V``.
      context: the longest sequence ``T`` (rows of the position table).
      features: the model width ``D``.
      num_layers, num_heads: transformer blocks and attention heads (``num_heads`` divides ``D``).
      mlp_features: hidden width of each block's MLP (default ``4 D``).
      bias: biases in the attention and MLP projections.
      approximate_gelu: the tanh GELU (GPT-2); False for the exact ``z Phi(z)``.
      embed_dropout, attention_dropout, residual_dropout: drop probabilities in training, in
        ``[0, 1)``, of the embeddings' sum, the attention probabilities and each block's two
        branches before they join the residual stream (GPT-2's ``embd_pdrop``, ``attn_pdrop``,
        ``resid_pdrop``).
      stddev: standard deviation of the weights at initialisation (GPT-2's ``initializer_range``).
      dtype: parameter dtype; default the canonical float.
      name: display name (default ``gpt(L, H, D, T)``).

    Examples:
      >>> model = bp.zoo.gpt(vocab=11, context=8, features=16, num_layers=2, num_heads=2)
      >>> out_shape, params = model.init(jax.random.key(0), (8,))
      >>> logits = bp.predict(model, params, jnp.zeros((2, 8), jnp.int32))
      >>> out_shape, logits.shape                                   # (B, T, vocab)
      ((8, 11), (2, 8, 11))
    """
    from bpjax.layers import Dense, Embedding, LayerNorm, TransformerBlock
    from bpjax.layers.attention import optional_dropout
    from bpjax.tied import tie

    num_layers = errors.positive_int("gpt", "num_layers", num_layers)
    D = errors.positive_int("gpt", "features", features)
    mlp_features = 4 * D if mlp_features is None else mlp_features
    if isinstance(stddev, bool) or not isinstance(stddev, (int, float)) or not stddev > 0:
        raise errors.BpjaxError("gpt", f"stddev must be a number > 0, got {stddev!r}")
    w = dict(init="normal", stddev=stddev, dtype=dtype)
    out_init = initializer("normal", stddev / math.sqrt(2 * num_layers))  # GPT-2's c_proj: 0.02 / sqrt(2 L)
    blocks = [TransformerBlock(num_heads, mlp_features=mlp_features, bias=bias, approximate_gelu=approximate_gelu,
                               attention_dropout=attention_dropout, residual_dropout=residual_dropout,
                               out_init=out_init, **w) for _ in range(num_layers)]
    with errors.context("gpt embed_dropout"):
        drop = optional_dropout(embed_dropout)
    body = serial(Embedding(vocab, D, **w), PositionEmbedding(context, **w), drop, *blocks,
                  LayerNorm(dtype=dtype), Dense(vocab, bias=False, **w))
    name = name or f"gpt(L{num_layers}, H{num_heads}, D{D}, T{context})"
    settings = dict(vocab=vocab, context=context, features=D, num_layers=num_layers, num_heads=num_heads,
                    mlp_features=mlp_features, bias=bias, approximate_gelu=approximate_gelu,
                    embed_dropout=embed_dropout, attention_dropout=attention_dropout,
                    residual_dropout=residual_dropout, stddev=stddev, dtype=dtype)
    model = tie(body, source=(0, "E"), target=(-1, "W"), transpose=True, name=name)
    return model._replace(kind="gpt", settings=tuple(settings.items()))


def gpt_config(model: Layer) -> dict | None:
    """The arguments :func:`gpt` built ``model`` with (its ``settings``), or None for a model :func:`gpt` did not
    build (its ``kind`` is not ``"gpt"``).

    ``gpt(**gpt_config(model))`` builds the same model again (the name aside). A renamed model
    (``model._replace(name=...)``) keeps them.

    Examples:
      >>> model = bp.zoo.gpt(vocab=11, context=8, features=16, num_layers=2, num_heads=2)
      >>> config = bp.zoo.gpt_config(model)
      >>> config["vocab"], config["context"], config["num_layers"]
      (11, 8, 2)
      >>> bp.zoo.gpt_config(L.Dense(4)) is None
      True
    """
    return dict(model.settings) if isinstance(model, Layer) and model.kind == "gpt" else None
