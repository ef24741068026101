"""Reference models, one definition shared by benchmarks, experiments and tests.

MNIST-1D (Greydanus 2020): every constructor takes inputs ``x: (B, 40)`` (the MNIST-1D signal) and
returns logits ``(B, 10)``:

- :func:`logistic`: ``Dense(10)``.
- :func:`mnist1d_mlp`: 40-100-100-10 ReLU with a residual on the middle layer:
  ``h1 = relu(x W1 + b1)``, ``h2 = h1 + relu(h1 W2 + b2)``, ``z = h2 W3 + b3``.
- :func:`mnist1d_cnn`: ``x -> (B, 40, 1)``, Conv1D 1->25 (k5, s2, p1), 25->25 (k3, s2, p1),
  25->25 (k3, s2, p1), ReLU after each (lengths 40 -> 19 -> 10 -> 5), flatten (125), Dense(10).
- :func:`mnist1d_gru`: ``x -> (B, 40, 1)``, bidirectional GRU (hidden 6, every step kept:
  ``(B, 40, 12)``), flatten (480), Dense(10).

Language models, ``ids: (B, T) -> logits: (B, T, V)``, trained with :data:`token_cross_entropy` on
:func:`token_windows` of a token stream and sampled with :func:`generate`:

- :func:`gpt`: GPT-2's layout and defaults, token and learned position embeddings, pre-norm
  transformer blocks (tanh GELU, optional dropout), a final LayerNorm and the output projection
  tied to the token embedding (:func:`bpjax.tied.tie`); :func:`gpt_config` gives its arguments back.
  :func:`load_gpt2` and :func:`save_gpt2` read and write it as a Hugging Face GPT-2 checkpoint.
- :func:`char_rnn`: Embedding, an LSTM or GRU, Dense(V); with ``batch_size`` the recurrent state is
  carried from one batch to the next (truncated backpropagation through time, :func:`TruncatedBPTT`).

One module each: :mod:`~bpjax.zoo.mnist1d`, :mod:`~bpjax.zoo.language` (windows, the loss and
:func:`generate`), :mod:`~bpjax.zoo.transformer` (the GPT), :mod:`~bpjax.zoo.gpt2_checkpoint` (GPT-2
checkpoints in and out), :mod:`~bpjax.zoo.recurrent_lm` (the character RNN).
"""

from bpjax.zoo.gpt2_checkpoint import load_gpt2, save_gpt2
from bpjax.zoo.language import generate, token_cross_entropy, token_windows
from bpjax.zoo.mnist1d import LENGTH, MODELS, N_CLASSES, AddChannel, logistic, mnist1d_cnn, mnist1d_gru, mnist1d_mlp
from bpjax.zoo.recurrent_lm import TruncatedBPTT, char_rnn
from bpjax.zoo.transformer import PositionEmbedding, gpt, gpt_config

__all__ = ["LENGTH", "MODELS", "N_CLASSES", "AddChannel", "PositionEmbedding", "TruncatedBPTT", "char_rnn",
           "generate", "gpt", "gpt_config", "load_gpt2", "logistic", "mnist1d_cnn", "mnist1d_gru", "mnist1d_mlp",
           "save_gpt2", "token_cross_entropy", "token_windows"]
