"""Every number the README and the guides quote from a benchmark or an experiment equals a committed results file.

Each entry of ``CLAIMS`` is a phrase of the README or of a guide (``docs/guides/*.md``): a regular expression whose
named groups are numbers, the pages' line breaks read as spaces, that occurs once in all the pages together (one
place per fact), and, for each group, where the number comes from: a committed JSON file (``benchmarks/results/*.json``,
``docs/results/*.json``), a path into it (or a function of the whole file, for ranges and
ratios) and the format the page prints it in. The test re-formats the committed value and
compares strings, so a number can no longer drift from the run that produced it: rerun the
benchmark or the experiment, commit its JSON, and the page must follow.
"""

import importlib.util
import json
import re
from pathlib import Path
from typing import Any, Callable, Dict, NamedTuple, Tuple, Union

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guides").glob("*.md"))]
NUM = r"[-+]?[\d.]+(?:e[-+]?\d+)?"

# "a.b.c" or ("a", "b.c", "c") (keys of nested dicts, list indices as digits) or fn(whole json)
Getter = Union[str, Tuple[str, ...], Callable[[Any], Any]]


class Claim(NamedTuple):
    """A phrase of the pages; ``numbers[group] = (getter, format)``, the format a ``str.format`` spec or a function."""

    name: str
    phrase: str
    source: str
    numbers: Dict[str, Tuple[Getter, Union[str, Callable[[Any], str]]]]


def get(tree, getter: Getter):
    if callable(getter):
        return getter(tree)
    for part in getter if isinstance(getter, tuple) else getter.split("."):
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    return tree


def fmt(value, spec) -> str:
    return spec(value) if callable(spec) else spec.format(value)


def sig(value, digits: int = 2) -> str:
    """``value`` with ``digits`` significant digits as the pages print small errors: 4.5e-7, 0, 3e-16."""
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    return f"{mantissa}e{int(exponent)}"


def sci(value, decimals: int = 1) -> str:
    """``value`` in scientific notation with ``decimals`` kept, exponent unpadded: 2.0e-7, 3.5e-16."""
    mantissa, exponent = f"{value:.{decimals}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def span(values, spec="{:.1f}") -> str:
    """``min-max`` of ``values`` as the pages print a range (``1.0-1.3``)."""
    return f"{fmt(min(values), spec)}-{fmt(max(values), spec)}"


BENCH = "benchmarks/results/bench.json"
LAYERS = "benchmarks/results/layer_errors.json"
STREAM = "benchmarks/results/bench_stream.json"
GPT_BENCH, GPT2_BENCH = "benchmarks/results/bench_gpt.json", "benchmarks/results/bench_gpt2_small.json"
GPT2_TARGET = 0.85  # the fraction of the matmul rate that issue 23 asks of the GPT-2 small step
_GPT_CONTENDERS = {"m": "manual", "a": "autodiff", "t2": "torch", "t1": "torch_1"}  # group -> contender


def _mb(b) -> str:
    return f"{b / 1e6:.0f}"


def _gpt_loads(d) -> list:
    """The 1-minute load averages at the start and the end of both GPT benchmark runs."""
    nano = json.loads((ROOT / GPT_BENCH).read_text())
    return [r[k][0] for r in (d, nano) for k in ("load_average_start", "load_average_end")]


def _target_step(d) -> float:
    """The GPT-2 small step's time at ``GPT2_TARGET`` of the matmul rate: its matmul FLOPs over that rate."""
    return d["profile"]["matmul_flops"] / (GPT2_TARGET * d["matmul_gflops"] * 1e9)
GPT, CHAR_RNN = "docs/results/gpt.json", "docs/results/char_rnn.json"
MODELS = ("mlp", "cnn", "gru")


def _mnist1d_row(model: str) -> Claim:
    m = f"mnist1d.{model}"
    return Claim(f"benchmark table, {model}",
                 rf"\| {model.upper()} \| (?P<manual>{NUM}) s \| (?P<auto>{NUM}) s \| "
                 rf"(?P<wall>{NUM}) \((?P<cpu>{NUM})\) \| (?P<torch>{NUM}) s \| (?P<acc>{NUM})% \|",
                 BENCH, {"manual": (f"{m}.manual.wall_s", "{:.2f}"), "auto": (f"{m}.autodiff.wall_s", "{:.2f}"),
                         "wall": (f"{m}.manual/autodiff_wall", "{:.2f}"), "cpu": (f"{m}.manual/autodiff", "{:.2f}"),
                         "torch": (f"{m}.torch.wall_s", "{:.2f}"),
                         "acc": (lambda d, m=m: 100 * get(d, f"{m}.manual.test_accuracy"), "{:.1f}")})


def _layer_row(row: str, cell: str) -> Claim:
    """The last cell of the row that starts with ``cell``: ``| layer | forward | backward | f32 / f64 |``."""
    return Claim(f"layer table, {row}", rf"\| {cell}[^|]*\|[^|]*\|[^|]*\| (?P<f32>{NUM}) / (?P<f64>{NUM})(?: \(|\s*\|)",
                 LAYERS, {"f32": (f"rows.{row}.f32", sig), "f64": (f"rows.{row}.f64", sig)})


def _grad_only(kind: str) -> Dict[str, Tuple[Getter, str]]:
    return {f"{kind}_{m}": (f"grad_only.{m}.manual/autodiff{'_wall' if kind == 'wall' else ''}", "{:.2f}")
            for m in MODELS}


def _step_fractions(backward: str):
    """The large-MLP step's fraction of the matmul ceiling, alone and inside ``fit``, as a range."""
    return (lambda d: [d["large_mlp"][backward][k] for k in ("fraction_of_matmul", "fit_fraction_of_matmul")],
            lambda v: span(v, "{:.2f}"))


def R(experiment: str) -> str:
    """The committed full run of ``python -m experiments <experiment>``."""
    return f"docs/results/{experiment}.json"


def pct(getter: Getter, digits: int = 1, error: bool = False) -> Tuple[Callable[[Any], Any], str]:
    """A fraction in the file printed as a percentage (or as an error percentage, ``100 - acc``)."""
    return (lambda d: 100 * (1 - get(d, getter)) if error else 100 * get(d, getter), f"{{:.{digits}f}}")


MNIST1D_ROWS = {"logistic": r"logistic", "mlp": r"MLP \(40-100-100-10, residual\)",
                "cnn": r"CNN \(3 x Conv1D, Dense\)", "gru": r"bidirectional GRU \(hidden 6\)"}
ALIGN = ("BP", "sign", "DFA", "FA")


def _results_claims():
    """The Results section: the MNIST-1D table and the headline of every experiment."""
    for m, row in MNIST1D_ROWS.items():
        at = ("metrics", "models", m)
        yield Claim(f"MNIST-1D table, {m}",
                    rf"\| {row} \| (?P<mean>{NUM}) ± (?P<std>{NUM}) \| (?P<paper>{NUM}) \| (?P<nb>{NUM}) \|",
                    R("mnist1d"), {"mean": ((*at, "test_acc_percent"), "{:.1f}"),
                                   "std": ((*at, "test_acc_std"), "{:.1f}"), "paper": ((*at, "paper"), "{:.0f}"),
                                   "nb": ((*at, "notebook_6000_steps"), "{:.1f}")})

    def models(d):
        return d["metrics"]["models"]

    yield Claim("MNIST-1D against the published figures",
                rf"logistic regression (?P<below>{NUM}) point below its (?P<nb>{NUM}), and all within "
                rf"(?P<within>{NUM}) points of the paper's", R("mnist1d"),
                {"below": (lambda d: models(d)["logistic"]["notebook_6000_steps"]
                           - models(d)["logistic"]["test_acc_percent"], "{:.1f}"),
                 "nb": ("metrics.models.logistic.notebook_6000_steps", "{:.1f}"),
                 "within": (lambda d: max(m["paper"] - m["test_acc_percent"] for m in models(d).values()), "{:.1f}")})
    yield Claim("main job", rf"reaches (?P<acc>{NUM})% and checks the hand-written gradients against `jax.grad` "
                            rf"every (?P<every>\d+) steps: worst relative error (?P<err>{NUM})", R("mnist1d_mlp"),
                {"acc": ("metrics.test_accuracy_percent", "{:.1f}"),
                 "every": ("metrics.grad_checks.0.0", "{}"), "err": ("metrics.grad_check_max_rel_error", sci)})
    yield Claim("chain rule", rf"at w=(?P<w>{NUM}), x=(?P<x>{NUM}): dL/dw = (?P<dw>{NUM}), as `jax.grad`; every "
                              rf"dz, dW, db, da of a 2-layer net matches to (?P<err>{NUM})", R("chain_rule"),
                {"w": ("config.w", "{:.0f}"), "x": ("config.x", "{:.0f}"), "dw": ("metrics.scalar.jax_dL_dw", "{:.0f}"),
                 "err": ("metrics.two_layer.max_rel_error", sci)})

    def run(name, *rest):
        return ("metrics", "runs", name, *rest)

    yield Claim("gradient descent on sin",
                rf"(?P<steps>\d+) steps: lr 0.05 crawls to (?P<small>{NUM}); lr 1.0 reaches 3π/2 = (?P<star>{NUM}); "
                rf"lr 1.8 oscillates across it (?P<over>\d+) times; .* the 2-cycle (?P<lo>{NUM}) <-> (?P<hi>{NUM})",
                R("gradient_descent_1d"),
                {"steps": ("metrics.steps", "{}"), "small": (run("too small (0.05)", "x_final"), "{:.2f}"),
                 "star": (run("good (1.0)", "x_final"), "{:.3f}"),
                 "over": (run("oscillating (1.8)", "overshoots"), "{}"),
                 "lo": (run("too large (3.0)", "x_last_three", "1"), "{:.3f}"),
                 "hi": (run("too large (3.0)", "x_last_three", "2"), "{:.3f}")})
    yield Claim("learning rates",
                rf"Adam on the MNIST-1D MLP, (?P<steps>\d+) steps: best (?P<best>{NUM}) \((?P<best_acc>{NUM})% test; "
                rf"3e-3: (?P<acc3>{NUM})%\); 1e-4 crawls \((?P<acc0>{NUM})%\); 1.0 fails to learn \(training loss "
                rf"(?P<loss8>{NUM}), .* (?P<acc8>{NUM})% test\)", R("learning_rate"),
                {"steps": ("config.steps", "{}"), "best": ("metrics.best_rate", lambda r: sig(r, 1)),
                 "best_acc": ("metrics.best_test_acc_percent", "{:.1f}"),
                 **{f"acc{i}": (f"metrics.test_acc_percent.{i}", "{:.1f}") for i in (0, 3, 8)},
                 "loss8": ("metrics.final_train_loss.8", "{:.2f}")})
    opts = {"SGD": "SGD (0.1)", "momentum": "momentum (0.05, 0.9)", "Nesterov": "Nesterov (0.05, 0.9)",
            "RMSProp": "RMSProp (1e-3)", "Adam": "Adam (1e-2)", "AdamW": "AdamW (1e-2, wd 1e-2)"}
    yield Claim("optimizers", r"(?P<steps>\d+) steps, test %: " + ", ".join(rf"{k} (?P<{k}>{NUM})" for k in opts),
                R("optimizers"),
                {"steps": ("config.steps", "{}"),
                 **{k: (("metrics", "optimizers", v, "test_acc_percent"), "{:.1f}") for k, v in opts.items()}})

    def cfg(name, what):
        return ("metrics", "configs", name, what)

    yield Claim("vanishing gradients",
                rf"gradients shrink (?P<f0>{NUM})x, (?P<f1>{NUM})x, (?P<f2>{NUM})x per layer going back \(Nielsen, "
                rf"[^:]*: (?P<p0>{NUM}), (?P<p1>{NUM}), (?P<p2>{NUM})\)\. (?P<depth>\d+) layers of (?P<width>\d+) at "
                rf"init, first/last hidden-layer gradient: sigmoid\+Glorot (?P<sg>{NUM}) \(vanishing\), tanh\+Glorot "
                rf"(?P<tg>{NUM}), ReLU\+He (?P<rh>{NUM}); ReLU\+N\(0,1\) reaches (?P<rn>{NUM}) \(exploding\), "
                rf"brought down to (?P<bn>{NUM}) by batch norm and (?P<ln>{NUM}) by layer norm\. An unscaled "
                rf"residual stack with He init still grows \((?P<res>{NUM})\)", R("vanishing_gradients"),
                {**{f"f{i}": (f"metrics.nielsen.factors.{i}", "{:.1f}") for i in range(3)},
                 **{f"p{i}": (f"metrics.nielsen.published_factors.{i}", "{:.1f}") for i in range(3)},
                 "depth": ("config.depth", "{}"), "width": ("config.width", "{}"),
                 "sg": (cfg("sigmoid, Glorot", "first_over_last_hidden_init"), sci),
                 "tg": (cfg("tanh, Glorot", "first_over_last_hidden_init"), "{:.2f}"),
                 "rh": (cfg("relu, He", "first_over_last_hidden_init"), "{:.2f}"),
                 "rn": (cfg("relu, N(0,1) (exploding)", "max_norm_init"), sig),
                 "bn": (cfg("relu, N(0,1), batch-norm", "max_norm_init"), "{:.1f}"),
                 "ln": (cfg("relu, N(0,1), layer-norm", "max_norm_init"), "{:.1f}"),
                 "res": (cfg("relu, He, residual", "max_norm_init"), lambda v: sig(v, 1))})

    def digits_accuracies(d):
        return [100 * a["test_accuracy_mean"] for a in d["metrics"]["digits"].values() if isinstance(a, dict)]

    yield Claim("alignment",
                rf"MNIST-1D test error %: BP (?P<BP>{NUM}), sign (?P<sign>{NUM}), DFA (?P<DFA>{NUM}), "
                rf"FA (?P<FA>{NUM}), the published ordering \(biotorch, [^:]*: BP (?P<pBP>{NUM}), sign "
                rf"(?P<psign>{NUM}), DFA (?P<pDFA>{NUM}), FA (?P<pFA>{NUM})\); digits: all within (?P<within>{NUM}) "
                rf"points \(sign (?P<dsign>{NUM}), BP (?P<dBP>{NUM}), DFA (?P<dDFA>{NUM}), FA (?P<dFA>{NUM})\)\. FA's "
                rf"angle between W and B in the last layer falls from 90° to (?P<angle>{NUM})°", R("alignment"),
                {**{r: pct(f"metrics.mnist1d.{r}.test_accuracy_mean", error=True) for r in ALIGN},
                 **{f"p{r}": (f"config.published_error.{r}", "{:g}") for r in ALIGN},
                 **{f"d{r}": pct(f"metrics.digits.{r}.test_accuracy_mean", error=True) for r in ALIGN},
                 "within": (lambda d: max(digits_accuracies(d)) - min(digits_accuracies(d)), "{:.1f}"),
                 "angle": ("metrics.mnist1d.FA.final_wb_angle.2", "{:.0f}")})
    yield Claim("hessian", rf"agrees with `jax.grad`'s to (?P<agree>{NUM}); λ_max rises from (?P<init>{NUM}) to "
                           rf"(?P<max05>{NUM}) during SGD at lr 0.05, and peaks at (?P<max2>{NUM}) then falls to "
                           rf"(?P<end2>{NUM}) at lr 0.2", R("hessian"),
                {"agree": ("metrics.init_rel_diff", sci), "init": ("metrics.init_manual", "{:.1f}"),
                 "max05": (("metrics", "lr_0.05", "max_lambda"), "{:.1f}"),
                 "max2": (("metrics", "lr_0.2", "max_lambda"), "{:.1f}"),
                 "end2": (("metrics", "lr_0.2", "lambda_max", "-1"), "{:.1f}")})
    noisy = [("metrics", f"DP-SGD clip 1, sigma {s}", "test_accuracy") for s in ("0", "0.5", "1")]
    yield Claim("DP-SGD", rf"per-example gradients match `vmap\(grad\)` to (?P<pe>{NUM}) \(f32\), the private "
                          rf"backward matches optax's `differentially_private_aggregate` of them to (?P<pb>{NUM}); "
                          rf"(?P<steps>\d+) steps: SGD (?P<sgd>{NUM})% test, DP-SGD \(clip 1\) (?P<span>{NUM}-{NUM})% "
                          rf"for noise 0-1", R("dp_sgd"),
                {"pe": ("metrics.per_example_max_rel_error", sci),
                 "pb": ("metrics.private_backward_max_rel_error", sci), "steps": ("config.steps", "{}"),
                 "sgd": pct(("metrics", "SGD (non-private)", "test_accuracy")),
                 "span": (lambda d: [100 * get(d, g) for g in noisy], span)})
    yield Claim("digits", rf"test (?P<acc>{NUM}) ± (?P<std>{NUM})% \((?P<n>\d+) seeds\) beside scikit-learn's SVC "
                          rf"(?P<svc>{NUM})%", R("digits"),
                {"acc": pct("metrics.test_accuracy"), "std": pct("metrics.test_accuracy_std"),
                 "n": (lambda d: len(d["metrics"]["test_accuracy_per_seed"]), "{}"),
                 "svc": pct("metrics.svc_test_accuracy")})
    for name, key in (("gradient descent", "gd_test_mse"), ("least squares", "least_squares_test_mse")):
        yield Claim(f"regression, {name}", rf"test MSE (?P<mse>{NUM}) by gradient descent and by closed-form least "
                                           rf"squares", R("regression"), {"mse": (f"metrics.{key}", "{:.1f}")})

    def gap(name):
        return (("metrics", "settings", name, "acc_gap"), "{:.2f}")

    yield Claim("regularization", rf"(?P<n>\d+) digits, (?P<noise>\d+)% wrong labels: train/test gap (?P<none>{NUM}) "
                                  rf"without, (?P<wd>{NUM}) with weight decay, (?P<drop>{NUM}) with dropout",
                R("regularization"),
                {"n": (lambda d: int(d["config"]["data"].split("first ")[1].split()[0]), "{}"),
                 "noise": (lambda d: 100 * d["config"]["label_noise"], "{:.0f}"),
                 "none": gap("none"), "wd": gap("weight decay 10"), "drop": gap("dropout 0.2/0.5")})

    def variant(name):
        return ("metrics", "variants", name, "task_a_acc")

    yield Claim("forgetting", rf"task A falls (?P<a1>{NUM})% -> (?P<a2>{NUM})%; rehearsing 5 old images per batch of "
                              rf"100 keeps (?P<r5>{NUM})% \(10: (?P<r10>{NUM})%\); task B (?P<b>{NUM})% either way",
                R("forgetting"),
                {"a1": pct("metrics.task_a_acc_after_phase1", 0), "a2": pct(variant("no rehearsal")),
                 "r5": pct(variant("rehearsal 5/100 per batch"), 0),
                 "r10": pct(variant("rehearsal 10/100 per batch"), 0),
                 "b": (lambda d: [100 * x["task_b_acc"] for x in d["metrics"]["variants"].values()],
                       lambda bs: "/".join(sorted({f"{b:.0f}" for b in bs})))})  # one figure for every variant


# The rows of the layers guide's table: the row's name in layer_errors.json -> its first cell (a regex).
LAYER_ROWS = {"Dense": r"`Dense\(F, ", "activations": r"`Identity`, `Sigmoid`",
              "Softmax, LogSoftmax": r"`Softmax`, `LogSoftmax` ", "Flatten": r"`Flatten` ",
              "Conv1D, Conv2D": r"`Conv1D`, `Conv2D`", "pools": r"`MaxPool1D/2D`", "BatchNorm": r"`BatchNorm`",
              "LayerNorm": r"`LayerNorm` ", "Dropout": r"`Dropout\(rate\)`",
              "Embedding": r"`Embedding\(vocab, features\)`", "recurrent": r"`SimpleRNN`, `GRU`",
              "MultiHeadSelfAttention": r"`MultiHeadSelfAttention", "TransformerBlock": r"`TransformerBlock"}

CLAIMS = [
    *[_mnist1d_row(m) for m in MODELS],
    Claim("benchmark compile time", rf"the first manual call adds (?P<span>{NUM}-{NUM}) s of compilation", BENCH,
          {"span": (lambda d: [d["mnist1d"][m]["manual"]["compile_wall_s"] for m in MODELS], span)}),
    Claim("value-and-grad alone",
          rf"manual / `jax.grad` = (?P<wall_mlp>{NUM}) \(MLP\), (?P<wall_cnn>{NUM}) \(CNN\), "
          rf"(?P<wall_gru>{NUM}) \(GRU\) in wall-clock time \(CPU time (?P<cpu_mlp>{NUM}), (?P<cpu_cnn>{NUM}), "
          rf"(?P<cpu_gru>{NUM})\)", BENCH, {**_grad_only("wall"), **_grad_only("cpu")}),
    Claim("residual memory",
          rf"MLP (?P<mlp_m>{NUM}) kB vs (?P<mlp_a>{NUM}) kB, GRU (?P<gru_m>{NUM}) MB vs (?P<gru_a>{NUM}) MB", BENCH,
          {"mlp_m": ("memory.mlp.manual_residual_bytes", lambda b: f"{b / 1e3:.0f}"),
           "mlp_a": ("memory.mlp.autodiff_residual_bytes", lambda b: f"{b / 1e3:.0f}"),
           "gru_m": ("memory.gru.manual_residual_bytes", lambda b: f"{b / 1e6:.2f}"),
           "gru_a": ("memory.gru.autodiff_residual_bytes", lambda b: f"{b / 1e6:.2f}")}),
    Claim("large MLP step",
          rf"runs at (?P<manual>{NUM}-{NUM}) of this machine's measured 1024³ matmul throughput, as `jax.grad`'s "
          rf"step does \((?P<auto>{NUM}-{NUM})\); the gradient alone reaches (?P<grad>{NUM}) \(`jax.grad`: "
          rf"(?P<grad_auto>{NUM})\)", BENCH,
          {"manual": _step_fractions("manual"), "auto": _step_fractions("autodiff"),
           "grad": ("large_mlp.manual.grad_fraction_of_matmul", "{:.2f}"),
           "grad_auto": ("large_mlp.autodiff.grad_fraction_of_matmul", "{:.2f}")}),
    Claim("fit_many speed-up", rf"`fit_many` over (?P<n>\d+) seeds costs the same as \d+ separate runs "
                               rf"\((?P<x>{NUM})x\)", BENCH, {"n": ("vmap.n", "{}"), "x": ("vmap.speedup", "{:.2f}")}),
    *[_layer_row(row, cell) for row, cell in LAYER_ROWS.items()],
    *_results_claims(),
    Claim("streamed vs resident", rf"runs at (?P<mlp>{NUM}) of its speed on the MNIST-1D MLP and (?P<cnn>{NUM}) on "
                                  rf"the CNN \(process CPU time, (?P<steps>\d+) steps, best of (?P<n>\d+) interleaved "
                                  rf"runs on a shared 2-core Xeon at load average (?P<load>\d+);", STREAM,
          {"mlp": ("throughput.mlp.streamed/resident_cpu", "{:.2f}"),
           "cnn": ("throughput.cnn.streamed/resident_cpu", "{:.2f}"), "steps": ("steps", "{}"),
           "n": ("repeats", "{}"), "load": ("machine.load_average.0", "{:.0f}")}),
    Claim("cost of the input checks",
          rf"wall time (?P<cw>{NUM}) \(CPU time (?P<cc>{NUM})\) for a cached call, "
          rf"(?P<fw>{NUM}) \((?P<fc>{NUM})\) for a first call that compiles, medians of (?P<n>\d+) and 3 "
          rf"interleaved runs on a (?P<cores>\d+)-core AMD EPYC",
          "benchmarks/results/bench_checks.json",
          {"cw": ("cached_ratio.wall", "{:.2f}"), "cc": ("cached_ratio.cpu", "{:.2f}"),
           "fw": ("first_ratio.wall", "{:.2f}"), "fc": ("first_ratio.cpu", "{:.2f}"), "n": ("repeats", "{}"),
           "cores": ("machine.cores", "{}")}),
    Claim("cost of the NaN guard",
          rf"wall time (?P<cw>{NUM}) \(CPU time (?P<cc>{NUM})\) for a\s+cached call, (?P<fw>{NUM}) \((?P<fc>{NUM})\) "
          rf"for a first call that compiles \(the same program: noise of a loaded\s+machine\), medians of (?P<n>\d+) "
          rf"and 3 interleaved runs", "benchmarks/results/bench_nan_guard.json",
          {"cw": ("cached_ratio.wall", "{:.2f}"), "cc": ("cached_ratio.cpu", "{:.2f}"),
           "fw": ("first_ratio.wall", "{:.2f}"), "fc": ("first_ratio.cpu", "{:.2f}"), "n": ("repeats", "{}")}),
    Claim("mixed precision", rf"the test accuracy is\s+(?P<f32>{NUM})% in float32, (?P<bf16>{NUM})% in bfloat16 "
                             rf"\((?P<dbf>[-+]?{NUM}) points\) and (?P<f16>{NUM})% in float16 "
                             rf"\((?P<df>[-+]?{NUM})\), with (?P<rlow>[\d,]+) residual\s+bytes per batch of 100 "
                             rf"against (?P<r32>[\d,]+)",
          "benchmarks/results/bench_precision.json",
          {"f32": ("precisions.float32.mean", "{:.1f}"), "bf16": ("precisions.bfloat16.mean", "{:.1f}"),
           "dbf": ("precisions.bfloat16.accuracy_minus_float32", "{:+.1f}"),
           "f16": ("precisions.float16.mean", "{:.1f}"),
           "df": ("precisions.float16.accuracy_minus_float32", "{:+.1f}"),
           "rlow": ("precisions.bfloat16.residual_bytes", "{:,}"),
           "r32": ("precisions.float32.residual_bytes", "{:,}")}),
    Claim("tensor-parallel param bytes", r"params take (?P<b42>[\d,]+) bytes per device instead of (?P<b81>[\d,]+) "
                                         r"\((?P<b24>[\d,]+) on a 2 x 4 mesh\)", STREAM,
          {f"b{k[0]}{k[2]}": (f"device_bytes.mlp_param_bytes.{k}", "{:,}") for k in ("4x2", "8x1", "2x4")}),
    Claim("GPT benchmark conditions",
          rf"agree at the start, loss and every gradient, to (?P<err>{NUM}) \(relative, float32\)\. The machine is a "
          rf"(?P<cores>\d+)-core AMD EPYC shared with other jobs \(load average (?P<lo>{NUM})-(?P<hi>{NUM}) during the "
          rf"runs\), so each figure is the best of (?P<n>\d+) interleaved rounds", GPT2_BENCH,
          {"err": (lambda d: max(d["agreement"][k]["worst_grad_rel_error"] for k in ("autodiff", "torch")), sig),
           "cores": ("machine.cpu_count", "{}"), "n": ("repeats", "{}"),
           "lo": (lambda d: min(_gpt_loads(d)), "{:.1f}"), "hi": (lambda d: max(_gpt_loads(d)), "{:.1f}")}),
    Claim("GPT training speed",
          rf"shape \(batch (?P<b>\d+) x (?P<t>\d+), best of (?P<n>\d+)\): bpjax's hand-written backward "
          rf"(?P<manual>\d+) tokens/s, `jax.grad` (?P<auto>\d+) \(time ratio manual / `jax.grad` (?P<ratio>{NUM}), CPU "
          rf"(?P<cpu>{NUM})\), PyTorch eager (?P<t2>\d+) on (?P<threads>\d+) threads and (?P<t1>\d+) on 1; the "
          rf"backward keeps (?P<mm>{NUM}) MB against `jax.grad`'s (?P<ma>{NUM}) MB and PyTorch's (?P<mt>{NUM}) MB",
          GPT_BENCH,
          {"b": ("shape.batch", "{}"), "t": ("shape.seq", "{}"), "n": ("repeats", "{}"),
           "manual": ("manual.tokens_per_s", "{:.0f}"), "auto": ("autodiff.tokens_per_s", "{:.0f}"),
           "ratio": ("manual/autodiff", "{:.2f}"), "cpu": ("manual/autodiff_cpu", "{:.2f}"),
           "t2": ("torch.tokens_per_s", "{:.0f}"), "threads": ("torch_threads", "{}"),
           "t1": ("torch_1.tokens_per_s", "{:.0f}"),
           "mm": ("memory.float32.manual_residual_bytes", lambda b: f"{b / 1e6:.1f}"),
           "ma": ("memory.float32.autodiff_residual_bytes", lambda b: f"{b / 1e6:.1f}"),
           "mt": (lambda d: d["memory"]["torch"]["saved_bytes"] + d["memory"]["torch"]["saved_param_bytes"],
                  lambda b: f"{b / 1e6:.1f}")}),
    Claim("GPT-2 small shape", r"At GPT-2 small's shape \((?P<n>\d+)M parameters, (?P<layers>\d+) layers, width "
                               r"(?P<width>\d+), vocabulary (?P<vocab>\d+); on this CPU a short sequence and a small "
                               r"batch, (?P<b>\d+) x (?P<t>\d+) tokens\)", GPT2_BENCH,
          {"n": ("shape.parameters", lambda n: f"{n / 1e6:.0f}"), "layers": ("shape.layers", "{}"),
           "width": ("shape.width", "{}"), "vocab": ("shape.vocab", "{}"), "b": ("shape.batch", "{}"),
           "t": ("shape.seq", "{}")}),
    Claim("GPT-2 small speed",
          rf"the hand-written backward (?P<m>\d+) tokens/s, (?P<fm>{NUM}) of the machine's float32 matmul rate "
          rf"\((?P<side>\d+)³, measured in the same rounds\), `jax.grad` (?P<a>\d+) \((?P<fa>{NUM})\), PyTorch eager "
          rf"(?P<t2>\d+) on \d+ threads \((?P<ft2>{NUM})\) and (?P<t1>\d+) on 1 \((?P<ft1>{NUM})\); per second of CPU "
          rf"time (?P<cm>\d+), (?P<ca>\d+), (?P<ct2>\d+) and (?P<ct1>\d+)", GPT2_BENCH,
          {"side": ("shape.matmul", "{}"),
           **{f"{g}": (f"{k}.tokens_per_s", "{:.0f}") for g, k in _GPT_CONTENDERS.items()},
           **{f"f{g}": (f"{k}.fraction_of_matmul", "{:.2f}") for g, k in _GPT_CONTENDERS.items()},
           **{f"c{g}": (f"{k}.cpu_tokens_per_s", "{:.0f}") for g, k in _GPT_CONTENDERS.items()}}),
    Claim("GPT-2 small memory",
          r"The hand-written backward keeps (?P<mm>\d+) MB for the backward, `jax.grad` (?P<ma>\d+) MB \((?P<arg>\d+) "
          r"MB of it params it saves as they are\), PyTorch (?P<ta>\d+) MB of activations and the (?P<tp>\d+) MB of "
          r"weights", GPT2_BENCH,
          {"mm": ("memory.float32.manual_residual_bytes", _mb), "ma": ("memory.float32.autodiff_residual_bytes", _mb),
           "arg": ("memory.float32.autodiff_argument_bytes", _mb), "ta": ("memory.torch.saved_bytes", _mb),
           "tp": ("memory.torch.saved_param_bytes", _mb)}),
    Claim("GPT-2 small profile",
          rf"the gradient's matmuls run at (?P<mf>{NUM}) of the matmul rate and take (?P<ms>{NUM}) of the step; the "
          rf"gradient alone takes (?P<gs>{NUM}) of the step, so the optimizer \((?P<os>{NUM}) of the step when timed "
          rf"alone\) is mostly hidden inside the one compiled step\. The target of (?P<target>{NUM}) of "
          rf"the matmul rate is a step of (?P<step>{NUM}) s, no longer than the gradient's matmuls alone "
          rf"\((?P<mm>{NUM}) s; everything\s+else takes (?P<now>{NUM}) s now\): out of reach at this shape, whose "
          rf"matmuls themselves run at (?P<mf2>{NUM}) of the\s+2048³ rate", GPT2_BENCH,
          {"mf": ("profile.matmul_fraction_of_ceiling", "{:.2f}"),
           **{g: (lambda d, k=k: d["profile"][k] / d["profile"]["step_s"], "{:.2f}")
              for g, k in (("ms", "matmul_s"), ("gs", "grad_s"), ("os", "optimizer_s"))},
           "target": (lambda d: GPT2_TARGET, "{:.2f}"), "step": (_target_step, "{:.2f}"),
           "mm": ("profile.matmul_s", "{:.2f}"), "mf2": ("profile.matmul_fraction_of_ceiling", "{:.2f}"),
           "now": ("profile.step_minus_matmul_s", "{:.2f}")}),
    Claim("GPT-2 small in bfloat16",
          r"the step keeps half the bytes \((?P<bm>\d+) MB\) but does not run faster here: (?P<bt>\d+) tokens/s "
          r"\((?P<bc>\d+) per CPU-second\)", GPT2_BENCH,
          {"bm": ("memory.bf16.manual_residual_bytes", _mb), "bt": ("bf16.tokens_per_s", "{:.0f}"),
           "bc": ("bf16.cpu_tokens_per_s", "{:.0f}")}),
    Claim("GPT in bfloat16, validation loss",
          rf"Trained (?P<steps>\d+) steps in bfloat16 mixed precision, the experiment's model reaches a validation "
          rf"loss of (?P<b>{NUM}) against (?P<f>{NUM}) in float32", "benchmarks/results/gpt_precision.json",
          {"steps": ("steps", "{}"), "b": ("bf16.val_loss", "{:.3f}"), "f": ("float32.val_loss", "{:.3f}")}),
    Claim("data-parallel batch bytes",
          r"\((?P<total>[\d,]+) bytes\) takes (?P<b1>[\d,]+) / (?P<b2>[\d,]+) / (?P<b4>[\d,]+) / (?P<b8>[\d,]+) bytes "
          r"per device on 1 / 2 / 4 / 8", STREAM,
          {"total": ("device_bytes.total_bytes", "{:,}"),
           **{f"b{n}": (f"device_bytes.{n}.max", "{:,}") for n in (1, 2, 4, 8)}}),
    Claim("generation cost", rf"would save at most (?P<save>{NUM}) of its (?P<total>{NUM}) ms per token", GPT,
          {"save": ("metrics.generation.most_a_cache_could_save_ms_per_token", "{:.1f}"),
           "total": ("metrics.generation.generate_ms_per_token", "{:.1f}")}),
    Claim("language-model data", rf"(?P<modules>\d+) fixed modules of the standard library \((?P<chars>{NUM}) M "
                                 rf"characters, (?P<vocab>\d+) symbols, 90/10 train/validation split\)", GPT,
          {"modules": (lambda d: len(d["config"]["data"]["modules"]), "{}"),
           "chars": ("config.data.characters", lambda c: f"{c / 1e6:.2f}"), "vocab": ("config.data.vocab", "{}")}),
    Claim("GPT shape", r"\((?P<layers>\d+) layers, (?P<heads>\d+) heads, width (?P<width>\d+), "
                       r"context (?P<context>\d+), batch (?P<batch>\d+), (?P<steps>\d+) iterations\)", GPT,
          {k: (f"config.{k}", "{}") for k in ("layers", "heads", "width", "context", "batch", "steps")}),
    *[Claim(f"char-RNN {m} budget", rf"{m.upper()}\((?P<features>\d+)\) \|", CHAR_RNN,
            {"features": (f"config.features.{m}", "{}")}) for m in ("lstm", "gru")],
    Claim("char-RNN parameter budget", rf"the same parameter budget \((?P<budget>{NUM}) M\) for the RNNs", CHAR_RNN,
          {"budget": (lambda d: [d["metrics"][m]["parameters"] for m in ("lstm", "gru")],
                      lambda ns: "/".join(sorted({f"{n / 1e6:.2f}" for n in ns})))}),  # one figure for both
    Claim("bigram floor", rf"\| count-based bigram \(the floor\) \| (?P<a>{NUM}) \| (?P<b>{NUM}) \|", GPT,
          {g: ("metrics.bigram_val_loss", "{:.3f}") for g in "ab"}),
    Claim("GPT validation loss", rf"\| GPT \((?P<params>{NUM}) M\) \| (?P<a>{NUM}) \| (?P<b>{NUM}) \|", GPT,
          {"params": ("metrics.parameters", lambda n: f"{n / 1e6:.2f}"),
           **{g: ("metrics.val_loss", "{:.3f}") for g in "ab"}}),
    *[Claim(f"char-RNN {m} validation loss", rf"\| {m.upper()}\(\d+\) \| (?P<streamed>{NUM}) \(state carried through "
                                            rf"the stream\) \| (?P<windows>{NUM}) \|", CHAR_RNN,
            {"streamed": (f"metrics.{m}.val_loss_streamed", "{:.3f}"),
             "windows": (f"metrics.{m}.val_loss_windows", "{:.3f}")}) for m in ("lstm", "gru")],
    Claim("language-model gradient checks", rf"during training: worst (?P<gpt>{NUM}) \(GPT\), "
                                            rf"(?P<lstm>{NUM}) \(LSTM\), (?P<gru>{NUM}) \(GRU\)", CHAR_RNN,
          {"gpt": (lambda d: json.loads((ROOT / GPT).read_text())["metrics"]["grad_check_max_rel_error"], sci),
           **{m: (f"metrics.{m}.grad_check_max_rel_error", sci) for m in ("lstm", "gru")}}),
    Claim("nanoGPT reference", rf"nanoGPT reaches about (?P<ref>{NUM}) with this shape on Tiny Shakespeare", GPT,
          {"ref": ("metrics.nanogpt_tiny_shakespeare_val_loss", "{:.2f}")}),
]


def _committed(source: str):
    path = ROOT / source
    assert path.exists(), f"{source} is not in the repository (the pages quote numbers from it)"
    return json.loads(path.read_text())


def _texts() -> dict:
    """``{page name: text}`` with every page's line breaks read as spaces (a phrase may wrap across lines)."""
    return {str(page.relative_to(ROOT)): " ".join(page.read_text().split()) for page in PAGES}


def the_one(pattern: str):
    """``(page, match)`` of ``pattern``, asserting it occurs once in all the pages together (one place per fact)."""
    found = [(name, m) for name, text in _texts().items() for m in re.finditer(pattern, text)]
    assert len(found) == 1, (f"the phrase {pattern!r} occurs {len(found)} times in the README and the guides "
                             f"({sorted({n for n, _ in found})}), expected once")
    return found[0]


@pytest.mark.parametrize("claim", CLAIMS, ids=[c.name for c in CLAIMS])
def test_number_equals_committed_result(claim):
    page, match = the_one(claim.phrase)
    data = _committed(claim.source)
    wrong = {}
    for group, (getter, spec) in claim.numbers.items():
        printed, committed = match.group(group), fmt(get(data, getter), spec)
        if printed != committed:
            wrong[group] = f"{page} prints {printed}, {claim.source} gives {committed}"
    assert not wrong, f"{page}, {claim.name}: {wrong}"


def test_the_worst_attention_leaf_is_the_key_bias():
    """The layers guide names ``bk`` as the worst leaf of attention and the transformer block: so it is."""
    the_one("The worst leaf of attention and the transformer block is the key bias `bk`")
    rows = _committed(LAYERS)["rows"]
    leaves = {(row, d): rows[row][f"{d}_case"].rsplit(", ", 1)[-1]
              for row in ("MultiHeadSelfAttention", "TransformerBlock") for d in ("f32", "f64")}
    assert all(leaf.endswith("['bk']") for leaf in leaves.values()), leaves


def test_the_bad_input_count_is_the_batterys():
    """The errors guide's count of bad inputs is the length of ``tests/test_bad_inputs.py``'s battery."""
    spec = importlib.util.spec_from_file_location("bad_inputs_battery", ROOT / "tests" / "test_bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, match = the_one(r"A battery of (\d+) bad inputs")
    assert match.group(1) == str(len(module.CASES)), (f"the errors guide quotes a battery of {match.group(1)} bad "
                                                      f"inputs; tests/test_bad_inputs.py has {len(module.CASES)}")


def test_the_number_machinery_reads_what_it_says():
    """The helpers format as the pages print: checked on fixed values, so a broken helper cannot pass."""
    assert [sig(4.5e-7), sig(9.7e-16), sig(0.0), sig(3e-16), sig(1.04e-5)] == ["4.5e-7", "9.7e-16", "0", "3e-16",
                                                                              "1e-5"]
    assert span([1.33, 1.03, 1.18]) == "1.0-1.3"
    assert get({"a": {"b/c": [0, 7]}}, "a.b/c.1") == 7
    assert fmt(0.9856, "{:.2f}") == "0.99" and [sci(1.96e-7), sci(3.536e-16)] == ["2.0e-7", "3.5e-16"]
    assert get({"a": {"b.c": [1, 2]}}, ("a", "b.c", "-1")) == 2
