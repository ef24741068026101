"""A character-level text corpus available offline on every machine: Python's own standard library source.

Why this corpus: the language-model experiments need about a megabyte of text with no download,
and every Python installation carries its standard library as source files
(``sysconfig.get_paths()["stdlib"]``). :data:`MODULES` is a fixed list of 22 pure-Python modules
that exist, as single files, from Python 3.10 on (packages that became folders, such as
``pathlib`` and ``zipfile``, are left out); concatenated they make about 1.1 MB, the size of Tiny
Shakespeare, nanoGPT's character-level corpus. The files change a little between Python versions,
so the losses move a little too: :func:`load` records the version and the size it read. Python
source is more regular than Shakespeare (indentation, keywords, repeated identifiers), so its
losses in nats per character are lower than Tiny Shakespeare's at the same model size.

Characters: a fixed vocabulary of 96, newline and the printable ASCII characters 32..126 (the same
ids on every machine, whatever the files hold). A tab becomes four spaces; any other character
(a handful of non-ASCII letters in docstrings) becomes ``?``. Split: the first 90% of the text
trains, the last 10% validates (nanoGPT's split).
"""

from __future__ import annotations

import os
import platform
import sysconfig
from typing import Dict, NamedTuple

import numpy as np

MODULES = ("argparse.py", "ast.py", "calendar.py", "configparser.py", "csv.py", "dataclasses.py", "difflib.py",
           "enum.py", "fractions.py", "functools.py", "gettext.py", "heapq.py", "inspect.py", "ipaddress.py",
           "logging/__init__.py", "pprint.py", "random.py", "shutil.py", "statistics.py", "string.py",
           "textwrap.py", "threading.py")
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
TRAIN_FRACTION = 0.9
_IDS = {c: i for i, c in enumerate(VOCAB)}
_UNKNOWN = _IDS["?"]


class Corpus(NamedTuple):
    """Token ids of the train and validation text (``int32``), and what was read."""

    train: np.ndarray
    val: np.ndarray
    info: Dict[str, object]


def encode(text: str) -> np.ndarray:
    """Characters -> ids in ``[0, 96)`` (:data:`VOCAB`); tabs as four spaces, other characters as ``?``."""
    text = text.replace("\t", "    ")
    return np.fromiter((_IDS.get(c, _UNKNOWN) for c in text), np.int32, len(text))


def decode(ids) -> str:
    """Ids -> text."""
    return "".join(VOCAB[int(i)] for i in np.asarray(ids).ravel())


def load(modules=MODULES) -> Corpus:
    """The concatenated source of ``modules`` (paths under the standard library), encoded and split 90/10."""
    root = sysconfig.get_paths()["stdlib"]
    parts, read, missing = [], [], []
    for m in modules:
        path = os.path.join(root, m)
        if not os.path.isfile(path):
            missing.append(m)
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            parts.append(f.read())
        read.append(m)
    if not parts:
        raise FileNotFoundError(f"none of the standard-library modules {list(modules)} was found under {root}")
    text = "\n".join(parts)
    ids = encode(text)
    unknown = int(np.sum(ids == _UNKNOWN)) - text.count("?")
    cut = int(TRAIN_FRACTION * len(ids))
    info = {"source": f"Python {platform.python_version()} standard library: {root}", "modules": read,
            "missing": missing, "characters": len(ids), "train_characters": cut,
            "val_characters": len(ids) - cut, "vocab": len(VOCAB), "replaced_characters": unknown}
    return Corpus(ids[:cut], ids[cut:], info)


def streams(ids: np.ndarray, batch: int, T: int):
    """The text as ``batch`` parallel streams cut into chunks of ``T``, ordered for truncated BPTT.

    Stream ``b`` is the ``b``-th of ``batch`` equal consecutive pieces of ``ids``; row ``s * batch + b``
    of ``x, y: (n_chunks * batch, T)`` is chunk ``s`` of stream ``b``. Taken ``batch`` rows at a time in
    order (``fit(..., shuffle=False)``), each batch continues the one before row by row, so a
    recurrent state carried between batches (:func:`bpjax.zoo.TruncatedBPTT`) reads every stream
    without a break. After the last chunk the streams start again from their beginnings.
    """
    from bpjax import zoo

    L = (len(ids) - 1) // batch
    n = L // T
    starts = np.arange(batch) * L + (np.arange(n) * T)[:, None]  # (n, batch): chunk s of stream b
    x, y = zoo.token_windows(ids, T, starts=starts)               # (n, batch, T)
    return x.reshape(n * batch, T), y.reshape(n * batch, T)


def bigram_loss(train: np.ndarray, x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> float:
    """The count-based bigram model's loss (nats per token) on the pairs ``(x, y)``: the floor to beat.

    ``P(b | a) = (count(a, b) + alpha) / (count(a) + alpha V)`` from the train ids (add-``alpha``
    smoothing, so a pair unseen in training has a finite loss); the loss is ``-mean log P(y | x)``.
    """
    V = len(VOCAB)
    counts = np.zeros((V, V))
    np.add.at(counts, (train[:-1], train[1:]), 1)
    logp = np.log(counts + alpha) - np.log(counts.sum(1, keepdims=True) + alpha * V)
    return float(-np.mean(logp[np.asarray(x).ravel(), np.asarray(y).ravel()]))


# ---------------------------------------------------------------------------------------------------
# what the language-model experiments share: the optimiser recipe, the full validation loss, samples and
# the float64 gradient check


def recipe(steps: int, *, lr: float = 1e-3, min_lr: float = 1e-4, warmup: int = 100, weight_decay: float = 0.1,
           beta2: float = 0.99, clip: float = 1.0):
    """nanoGPT's character-level recipe in optax: gradient clipping at global norm ``clip``, then AdamW
    (``b1=0.9``, ``b2=beta2``) with a linear warm-up over ``warmup`` steps to ``lr`` and a cosine decay to
    ``min_lr`` at ``steps``; weight decay on the matrices only (2-D and up: embeddings and weights, not
    biases or norm parameters), as nanoGPT's ``configure_optimizers``."""
    import jax
    import optax

    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(warmup, steps // 2), steps, min_lr)
    decay = lambda params: jax.tree.map(lambda a: a.ndim >= 2, params)  # noqa: E731
    return optax.chain(optax.clip_by_global_norm(clip),
                       optax.adamw(schedule, b1=0.9, b2=beta2, weight_decay=weight_decay, mask=decay)), schedule


def mean_loss(model, params, x, y, *, state=None, batch: int = 256) -> float:
    """The mean next-token loss of ``model`` (eval mode) over all of ``x, y: (N, T)``, ``batch`` rows at a time."""
    import jax
    import jax.numpy as jnp

    import bpjax as bp
    from bpjax import zoo

    @jax.jit
    def total(p, xb, yb):
        logits = bp.predict(model, p, xb, state=state)
        return zoo.token_cross_entropy.value(logits, yb) * yb.size

    n = (len(x) // batch) * batch  # whole batches: one compiled shape
    s = sum(float(total(params, jnp.asarray(x[i:i + batch]), jnp.asarray(y[i:i + batch])))
            for i in range(0, n, batch))
    return s / (n * x.shape[1])


def samples(model, params, prompts, length: int, *, context: int, temperature: float, top_k=None, state=None,
            seed: int = 0):
    """Continuations of each prompt (text) by :func:`bpjax.zoo.generate`, as text, all in one batch."""
    import jax

    from bpjax import zoo

    width = max(len(p) for p in prompts)
    ids = np.stack([np.pad(encode(p), (width - len(p), 0), constant_values=_IDS[" "]) for p in prompts])
    out = zoo.generate(model, params, ids, length, key=jax.random.key(seed), context=context,
                       temperature=temperature, top_k=top_k, state=state)
    return [p + decode(o[width:]) for p, o in zip(prompts, np.asarray(out))]


def float64_check(model, params, x, y, *, state=None):
    """:func:`bpjax.check_gradients` of the token loss at ``(params, state)`` cast to float64 (the ids ``x, y`` stay
    integer): late in training float32 gradients computed in two orders differ by more than roundoff while both
    are right; in float64 check_gradients' ``rtol=1e-10`` separates a wrong backward from roundoff."""
    import jax
    import jax.numpy as jnp
    import optax

    import bpjax as bp
    from bpjax import zoo

    with jax.enable_x64(True):
        params, state = optax.tree_utils.tree_cast((params, state), jnp.float64)
        return bp.check_gradients(model, zoo.token_cross_entropy, params, jnp.asarray(x), jnp.asarray(y), state=state)
