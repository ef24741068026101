"""GPT-2 checkpoints in and out (bpjax.zoo.load_gpt2, save_gpt2), and llm.c's test on a checkpoint of transformers.

llm.c's test: ``transformers``' own ``GPT2LMHeadModel`` with GPT-2's settings (``gelu_new``, tied head;
dropout 0 for the comparison) and random weights, saved with ``save_pretrained``; bpjax loads the folder and
compares in float64 the logits, the loss, every gradient (its hand-written backward against PyTorch autograd
through transformers' model) and 10 AdamW steps (bpjax's optax.adamw against torch.optim.AdamW); bpjax writes
the params back and ``from_pretrained`` reads logits identical to its own.

As in llm.c (whose test reads the state its PyTorch script wrote), the default suite reads a committed tiny
checkpoint and transformers' results on it (``tests/data/gpt2_tiny``, written by ``python
tests/test_gpt2_checkpoint.py``): importing transformers alone costs seconds. The slow set runs transformers
live, at that tiny shape (and checks that it still writes the committed files) and at GPT-2 small's depth.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_params

import bpjax as bp
from bpjax import zoo

V, T, D, LAYERS, HEADS, B = 11, 8, 16, 2, 2, 3


def _names(layers, prefix="transformer."):
    """The tensor names that ``save_pretrained`` writes for a ``GPT2LMHeadModel`` (``lm_head.weight`` is tied)."""
    per_block = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias"]
    names = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]
    names += [f"h.{l}.{n}" for l in range(layers) for n in per_block]
    return sorted(prefix + n for n in names)


def _read(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def _saved(tmp_path, **kw):
    """A tiny gpt (``kw`` overrides), random float32 params (numpy draws: nothing compiles), written by save_gpt2."""
    model = zoo.gpt(V, context=T, features=D, num_layers=LAYERS, num_heads=HEADS, **kw)
    params = random_params(model, (T,))
    zoo.save_gpt2(tmp_path / "gpt", model, params)
    return model, params, tmp_path / "gpt"


def test_save_and_load_gpt2_round_trip(tmp_path):
    # every option save_gpt2 writes: exact GELU, an MLP width other than 4D, three dropout rates, stddev
    model, params, folder = _saved(tmp_path, mlp_features=24, approximate_gelu=False, embed_dropout=0.1,
                                   attention_dropout=0.2, residual_dropout=0.3, stddev=0.05)
    tensors = _read(folder)
    assert sorted(tensors) == _names(LAYERS)
    attn = params[3][0][1]
    np.testing.assert_array_equal(tensors["transformer.h.0.attn.c_attn.weight"],
                                  np.concatenate([attn["Wq"], attn["Wk"], attn["Wv"]], 1))  # (D, 3D): q | k | v
    assert tensors["transformer.h.1.mlp.c_fc.weight"].shape == (D, 24)
    config = json.loads((folder / "config.json").read_text())
    assert (config["n_inner"], config["activation_function"], config["resid_pdrop"], config["dtype"]) == \
        (24, "gelu", 0.3, "float32")
    loaded, back = zoo.load_gpt2(folder)
    assert zoo.gpt_config(loaded) == zoo.gpt_config(model) and bp.is_contextual(loaded)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)  # bit for bit
    simple, _ = zoo.load_gpt2(folder, dropout=0.0)
    assert not bp.is_contextual(simple) and zoo.gpt_config(simple)["attention_dropout"] == 0.0


def test_load_gpt2_reads_the_original_layout(tmp_path):
    # The original GPT-2 files: names without "transformer.", the causal-mask buffers h.{l}.attn.bias and
    # .masked_bias, lm_head.weight stored beside wte.weight (equal), no n_inner (4D) and no dropout fields (0.1).
    from safetensors.numpy import save_file

    model, params, folder = _saved(tmp_path)
    tensors = {k.removeprefix("transformer."): v for k, v in _read(folder).items()}
    tensors["lm_head.weight"] = tensors["wte.weight"].copy()
    for l in range(LAYERS):
        tensors[f"h.{l}.attn.bias"] = np.tril(np.ones((1, 1, T, T), np.float32))
        tensors[f"h.{l}.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    for field in ("n_inner", "embd_pdrop", "attn_pdrop", "resid_pdrop"):
        del config[field]
    (folder / "config.json").write_text(json.dumps(config))
    loaded, back = zoo.load_gpt2(folder, dtype=jnp.float32)
    assert zoo.gpt_config(loaded)["mlp_features"] == 4 * D and zoo.gpt_config(loaded)["residual_dropout"] == 0.1
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_load_gpt2_refuses_what_gpt_cannot_represent(tmp_path):
    from safetensors.numpy import save_file

    _, _, folder = _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for field, value, supported in [("activation_function", "relu", r"\['gelu_new', 'gelu_pytorch_tanh', 'gelu'\]"),
                                    ("scale_attn_by_inverse_layer_idx", True, r"\[False\]"),
                                    ("reorder_and_upcast_attn", True, r"\[False\]"),
                                    ("add_cross_attention", True, r"\[False\]"),
                                    ("tie_word_embeddings", False, r"\[True\]"),
                                    ("layer_norm_epsilon", 1e-6, r"\[1e-05\]")]:
        (folder / "config.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(bp.BpjaxError, match=rf"load_gpt2: .*config.json: config field {field}={value!r} cannot be "
                                                rf"represented; bpjax's gpt supports {field} in {supported}"):
            zoo.load_gpt2(folder)
    (folder / "config.json").write_text(json.dumps(config))
    tensors = _read(folder)
    for extra, match in [({"lm_head.weight": np.zeros((V, D), np.float32)}, "lm_head.weight differs from wte.weight"),
                         ({"score.weight": np.zeros((D, 2), np.float32)}, r"tensors \['score.weight'\] have no place")]:
        save_file({**tensors, **extra}, str(folder / "model.safetensors"))
        with pytest.raises(bp.BpjaxError, match=match):
            zoo.load_gpt2(folder)
    save_file({k: v for k, v in tensors.items() if "h.1.ln_2" not in k}, str(folder / "model.safetensors"))
    with pytest.raises(bp.BpjaxError, match="the checkpoint has no tensor h.1.ln_2.weight"):
        zoo.load_gpt2(folder)
    with pytest.raises(bp.BpjaxError, match="holds no config.json"):
        zoo.load_gpt2(tmp_path)
    with pytest.raises(bp.BpjaxError, match=r"save_gpt2: expected a model built by bpjax.zoo.gpt.*got Dense\(3\)"):
        zoo.save_gpt2(tmp_path / "x", bp.layers.Dense(3), {})
    with pytest.raises(bp.BpjaxError, match="expected a gpt built with bias=True, got bias=False"):
        zoo.save_gpt2(tmp_path / "x", zoo.gpt(V, context=T, bias=False), ())


# ---------------------------------------------------------------------------------------------- llm.c's test

FIXTURE = Path(__file__).parent / "data" / "gpt2_tiny"
TINY = dict(vocab_size=V, n_positions=T, n_embd=D, n_layer=LAYERS, n_head=HEADS)
DEEP = dict(vocab_size=67, n_positions=32, n_embd=96, n_layer=12, n_head=12)  # GPT-2 small's 12 layers x 12 heads
LR, WD, STEPS = 1e-2, 0.1, 10


def _hf_model(folder, shape):
    """transformers' GPT2LMHeadModel with GPT-2's settings and dropout 0, float64, every parameter redrawn with
    numpy (LayerNorm scales 1 + 0.1 N(0, 1), everything else 0.15 N(0, 1): biases too, so that every path
    counts), saved in ``folder`` with save_pretrained. Returns the model."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=shape["vocab_size"] - 1, eos_token_id=shape["vocab_size"] - 1)
    assert config.activation_function == "gelu_new" and config.tie_word_embeddings  # GPT-2's own
    hf = GPT2LMHeadModel(config).double()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for name, t in hf.named_parameters():
            base = 1.0 if ".ln_" in name and name.endswith("weight") else 0.0
            t.copy_(torch.from_numpy(base + (0.1 if base else 0.15) * rng.standard_normal(tuple(t.shape))))
    hf.save_pretrained(folder)
    (Path(folder) / "generation_config.json").unlink(missing_ok=True)
    return hf


def _batch(shape):
    """``B`` windows of a random token stream and their targets, ``(B, n_positions)`` each."""
    n, context = shape["vocab_size"], shape["n_positions"]
    stream = np.random.default_rng(1).integers(0, n, B * (context + 1))
    return zoo.token_windows(stream, context, starts=np.arange(B) * (context + 1))


def _theirs(hf, ids, targets) -> dict:
    """transformers' side, as numpy arrays: ``logits``, ``loss``, ``grad/<name>`` at the saved weights, then
    ``losses`` of 10 torch.optim.AdamW steps and the ``trained/<name>`` params (``hf`` is trained in place)."""
    import torch

    t_ids, t_targets = torch.tensor(ids), torch.tensor(targets.reshape(-1))

    def loss_of():
        logits = hf(t_ids).logits
        return logits, torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), t_targets)

    logits, loss = loss_of()
    loss.backward()
    out = {"logits": logits.detach().numpy(), "loss": np.array(loss.item())}
    out.update({f"grad/{k}": t.grad.numpy().copy() for k, t in hf.named_parameters()})
    opt = torch.optim.AdamW(hf.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = loss_of()[1]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    out["losses"] = np.array(losses)
    out.update({f"trained/{k}": t.detach().numpy().copy() for k, t in hf.named_parameters()})
    return out


def _ours(folder, ids, targets, out) -> dict:
    """bpjax's side of :func:`_theirs`, from load_gpt2(folder); save_gpt2 gives the arrays transformers' names
    (and writes the loaded params back to ``out / "params"``)."""
    opt = optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=WD)
    with jax.enable_x64(True):
        model, params = zoo.load_gpt2(folder)
        assert not bp.is_contextual(model) and params[0]["E"].dtype == jnp.float64

        @jax.jit
        def step(params, opt_state, ids, targets):
            logits = model.forward(params, ids)[0]
            value, grads = bp.value_and_grad(model, zoo.token_cross_entropy)(params, ids, targets)
            updates, opt_state = opt.update(grads, opt_state, params)
            return logits, value, grads, optax.apply_updates(params, updates), opt_state

        p, state, losses, first = params, jax.jit(opt.init)(params), [], None  # one program, not one per leaf
        for _ in range(STEPS):
            logits, value, grads, p, state = step(p, state, jnp.asarray(ids), jnp.asarray(targets))
            first = first or (logits, value, grads)
            losses.append(float(value))
        for what, tree in [("params", params), ("grad", first[2]), ("trained", p)]:
            zoo.save_gpt2(out / what, model, tree)
    named = {f"{what}/{k}": v for what in ("params", "grad", "trained") for k, v in _read(out / what).items()}
    return {"logits": np.asarray(first[0]), "loss": np.asarray(first[1]), "losses": np.array(losses), **named}


def _rel_errors(ours: dict, theirs: dict, prefix: str) -> dict:
    """Per tensor under ``prefix``: max |ours - theirs| over the larger of max |theirs| and 1e-3 of the largest
    over all of them (check_gradients' measure: a tensor whose true value is ~0 is not measured against itself)."""
    names = [k for k in theirs if k.startswith(prefix)]
    floor = 1e-3 * max(np.max(np.abs(theirs[k])) for k in names)
    return {k: float(np.max(np.abs(ours[k] - theirs[k])) / max(np.max(np.abs(theirs[k])), floor)) for k in names}


def _compare(ours: dict, theirs: dict, width: int) -> dict:
    """llm.c's checks, float64: two implementations of the same maths differ by roundoff (~1e-16 per operation);
    1e-10 relative leaves a wide margin. Returns the figures."""
    ours, theirs = dict(ours), dict(theirs)
    figures = {"logits": np.max(np.abs(ours["logits"] - theirs["logits"])) / np.max(np.abs(theirs["logits"])),
               "loss": abs(float(ours["loss"]) - float(theirs["loss"])),
               "gradient": max(_rel_errors(ours, theirs, "grad/").values()),
               "10 AdamW losses": np.max(np.abs(ours["losses"] / theirs["losses"] - 1))}
    # The key bias bk (c_attn.bias[D:2D]) has gradient 0: bpjax's is exactly 0, so AdamW only decays it,
    # bk_10 = bk_0 (1 - lr wd)^10; torch's is roundoff g ~ 1e-17, which Adam turns into steps lr g / (|g| + eps)
    # of ~1e-11. Checked on its own; the other entries at 1e-10 relative.
    bk = slice(width, 2 * width)
    for name in [k for k in theirs if k.startswith("trained/") and k.endswith("c_attn.bias")]:
        start = ours[name.replace("trained/", "params/")]
        np.testing.assert_allclose(ours[name][bk], start[bk] * (1 - LR * WD) ** STEPS, rtol=1e-14)
        assert np.max(np.abs(ours[name][bk] - theirs[name][bk])) < 1e-9, name
        ours[name], theirs[name] = ours[name].copy(), theirs[name].copy()
        ours[name][bk] = theirs[name][bk] = 0
    figures["10 AdamW params"] = max(_rel_errors(ours, theirs, "trained/").values())
    assert figures["logits"] < 1e-12 and figures["loss"] < 1e-12 and figures["gradient"] < 1e-10, figures
    assert figures["10 AdamW losses"] < 1e-10 and figures["10 AdamW params"] < 1e-10, figures
    assert theirs["losses"][-1] < theirs["losses"][0] - 0.5  # it learns the batch (equal losses are not constants)
    return figures


def test_gpt2_checkpoint_of_transformers_equals_pytorch(tmp_path):
    # The committed checkpoint that transformers wrote and its results (tests/data/gpt2_tiny): the slow test below
    # checks that transformers still writes and computes them.
    theirs = _read_reference()
    ours = _ours(FIXTURE, theirs["ids"], theirs["targets"], tmp_path)
    assert sorted(k.removeprefix("grad/") for k in ours if k.startswith("grad/")) == _names(LAYERS)
    print("float64, tiny:", {k: f"{v:.1e}" for k, v in _compare(ours, theirs, D).items()})
    # save_gpt2 writes back, bit for bit, the tensors that transformers wrote
    written, committed = _read(tmp_path / "params"), _read(FIXTURE)
    assert sorted(written) == sorted(committed)
    for name in committed:
        np.testing.assert_array_equal(written[name], committed[name])


def _read_reference() -> dict:
    from safetensors.numpy import load_file

    return load_file(str(FIXTURE / "reference.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("shape", [TINY, DEEP], ids=["tiny", "deep"])
def test_gpt2_checkpoint_of_transformers_live(tmp_path, shape):
    # The default test's checks on a model transformers builds now (~4 s more: importing transformers alone takes
    # 3 s), then transformers reads the params bpjax writes back. At the tiny shape: transformers still writes the
    # committed checkpoint and computes the committed results.
    torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch (the test extra)")
    pytest.importorskip("transformers", reason="the reference model needs transformers (the test extra)")
    from transformers import GPT2LMHeadModel

    hf = _hf_model(tmp_path / "hf", shape)
    ids, targets = _batch(shape)
    theirs = _theirs(hf, ids, targets)
    ours = _ours(tmp_path / "hf", ids, targets, tmp_path)
    print(f"float64, {shape}:", {k: f"{v:.1e}" for k, v in _compare(ours, theirs, shape["n_embd"]).items()})
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "params", dtype=torch.float64)
    np.testing.assert_array_equal(back(torch.tensor(ids)).logits.detach().numpy(), theirs["logits"])
    if shape is TINY:
        for name, a in _read(FIXTURE).items():
            np.testing.assert_array_equal(_read(tmp_path / "hf")[name], a)
        committed = _read_reference()
        np.testing.assert_array_equal(committed["ids"], ids)
        for k, v in theirs.items():  # torch's float64 sums: the same to roundoff from run to run
            np.testing.assert_allclose(v, committed[k], rtol=1e-13, atol=1e-15, err_msg=k)


def write_fixture():
    """Write ``tests/data/gpt2_tiny``: transformers' tiny GPT-2 (config.json, model.safetensors) and its results
    on one batch (reference.safetensors: ids, targets, logits, loss, grad/<name>, losses, trained/<name>)."""
    from safetensors.numpy import save_file

    hf = _hf_model(FIXTURE, TINY)
    ids, targets = _batch(TINY)
    save_file({"ids": ids, "targets": targets, **_theirs(hf, ids, targets)}, str(FIXTURE / "reference.safetensors"))


if __name__ == "__main__":
    write_fixture()
