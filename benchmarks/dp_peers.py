"""The DP-SGD clipped gradient side by side with its peers, on the same model and weights.

Every implementation computes the clipped mean (1/m) sum_i g_i min(1, C/||g_i||)
of one batch (softmax cross-entropy, float32, C = 1), from the same weights
and data. Networks (``--networks``):

- ``mnist-wide``, ``small``: MLPs with relu hidden layers (the sections below);
- ``gpt-cpu``: ``models.gpt(vocab_size=65, block_size=64, n_layer=4, n_head=4,
  n_embd=128, dropout=0.0, bias=False)`` (nanoGPT's CPU run) on integer
  tokens and labels (12, 64); ``gpt-large``: T 256, 384 wide, 6 layers, 6
  heads, batch 64; ``gpt-tiny``: 1 layer, 2 heads, 16 wide, T 8, batch 3 (the
  smoke test); shapes from ``gpt_bench.SHAPES``. An example is one sequence,
  its loss the mean over its T positions;
- ``mnist1d-cnn``, ``2d-cnn``: the CNNs of ``benchmarks/cnn_bench.py``
  (its ``problems()``), random inputs and labels of 10 classes.

On the GPT and the CNNs (``run_layered``), each implementation is timed for
the clipped gradient alone and for one training step with AdamW (``step:``
rows; lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on the tensors with two or
more axes, nanoGPT's rule):

- ``functional_bp.clipped_grad(..., clip_norm=1.0)`` without noise (ours);
- ``functional_bp.value_and_grad`` (ours, non-private: the ratio's base);
- ``jax.vmap(jax.grad) + clip``: ``resmlp_bench.vmap_route`` (the agreement
  reference);
- ``jax-privacy clipped_grad`` (jitted, ``normalize_by=m``);
- ``PyTorch (non-private)``, ``opacus ghost clipping``
  (``GradSampleModuleFastGradientClipping``, what ``grad_sample_mode="ghost"``
  builds) and ``opacus per-sample hooks`` (``GradSampleModule``), noise 0,
  AdamW under Opacus's DP optimizer, on nanoGPT's own ``model.py`` (from
  ``--nanogpt``) and on PyTorch twins of the CNNs
  (``benchmarks/dp_peers_torch.py``, weights copied from ours, layouts and
  kernels transposed). nanoGPT's model is changed by a subclass there and
  nowhere else: its head is untied (``lm_head`` its own Parameter,
  initialised from our head, as ours trains it) and its position indices are
  expanded to a contiguous (B, T) before the position embedding. Opacus's ghost
  mode does not run without these: the run tries it once on nanoGPT's model
  as it is and with only the head untied and records the error each stops
  with.

Every clipped gradient is compared with the vmap reference, and the
non-private ones with ours, leaf by leaf (max|a - b| / max|b|, float32
tolerance 2e-5) before any timing. Memory: XLA's ``memory_analysis()``
temporary bytes for the JAX programs; for PyTorch the peak of the bytes
allocated through its CPU allocator during one call, from ``torch.profiler``'s
allocation events (``dp_peers_torch.peak_allocated``: gradients included,
BLAS/oneDNN scratch space not seen). An implementation that fails, whose
program would need more temporary memory than the machine has available, or
whose first call exceeds ``--max-call-s`` is listed with that reason (the
error, the bytes, or the seconds it took) instead of a time. A network where
some first call took over ``--slow-s`` seconds (gpt-large: tens of seconds a
call on 2 cores) is timed in ``--slow-blocks`` blocks of one call per
implementation, without warm-up or settling calls (its section says so); its
first calls are the agreement check's. These networks
write their own block (the run's label + ", GPT and CNNs").

On the MLPs:

- ``functional_bp.clipped_grad``: norms and clipping from the rows of the
  deltas, one weighted backward pass;
- ``privacy.private_batch_grad``: the private step of a padded batch (all
  rows real here) through :mod:`functional_bp.privacy`, timed with its noise
  (sigma = 1, one normal per parameter) and checked without it;
  (and without it, sigma = 0: the clipping alone);
- ``functional_bp.grad``: the ordinary (non-private) gradient, for the ratio
  "private step / non-private step";
- ``jax.vmap(jax.grad) + clip``: the per-example gradients of the plain
  objective, clipped and averaged (also the agreement reference);
- ``jax-privacy clipped_grad``: ``jax_privacy.clipping.clipped_grad`` with
  ``normalize_by=m``, under ``jax.jit``;
- ``opacus ghost clipping``: ``GradSampleModuleFastGradientClipping`` with
  ``DPOptimizerFastGradientClipping`` and ``DPLossFastGradientClipping``
  (two backward passes), noise 0, ``pre_step()``;
- ``opacus per-sample hooks``: ``GradSampleModule`` with ``DPOptimizer``,
  noise 0, ``pre_step()``.

torch, opacus and jax-privacy are optional: each missing one is skipped with a
printed note. torch runs on the CPU with 2 threads; JAX's CPU backend uses the
2 cores of this machine.

First every implementation is compared with the reference, leaf by leaf
(max|a - b| / max|b|); then all are timed in randomised alternating blocks
(:func:`timing.compare`, with a settling pause and one untimed call at each
switch, since the per-example routes free gigabytes that land on whoever runs
next). Temporary memory is XLA's ``memory_analysis()`` of the compiled
program (JAX implementations only; torch's is not measured). The table goes
into ``benchmarks/RESULTS.md`` as its own block (``report.write_block``),
leaving the other blocks as they are.

Run (one command for every network: the GPT and CNN block is written whole
by each run, so a second run with the same label replaces it)::

    python benchmarks/dp_peers.py --nanogpt NANOGPT_DIR --max-call-s 600
    python benchmarks/dp_peers.py --shapes small --blocks 2 --out /tmp/r.md
    python benchmarks/dp_peers.py --networks gpt-tiny mnist1d-cnn 2d-cnn --batch 4 \\
        --nanogpt NANOGPT_DIR --blocks 1 --warmup 0 --min-sample-s 0 --out /tmp/r.md

(the MLP shapes alone took ~5 min on 2 cores). torch, opacus and jax-privacy
must be installed in the same Python for their rows.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import shlex
import sys
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import report  # noqa: E402
import timing  # noqa: E402
from report import fmt_time, table  # noqa: E402

import cnn_bench  # noqa: E402  (the CNN problems)
import gpt_bench  # noqa: E402  (the GPT shapes, nanoGPT's names, the training step)
from gpt_bench import train_step  # noqa: E402
from resmlp_bench import vmap_route  # noqa: E402  (the clipped mean by vmap(grad))

import functional_bp as fbp  # noqa: E402
from functional_bp import _validate, privacy  # noqa: E402
from functional_bp.train import make_optimizer  # noqa: E402

SHAPES = {"mnist-wide": ([784, 1024, 1024, 10], 256), "small": ([64, 128, 10], 128)}
CLIP_NORM = 1.0
THREADS = 2
OURS = "functional_bp.clipped_grad"
PRIVATE = "privacy.private_batch_grad (sigma=1)"
PRIVATE0 = "privacy.private_batch_grad (sigma=0)"
PLAIN = "functional_bp.grad (non-private)"
REF = "jax.vmap(jax.grad) + clip"
JAXP = "jax-privacy clipped_grad"
GHOST = "opacus ghost clipping"
HOOKS = "opacus per-sample hooks"
TARGET_PRIVATE_OVER_PLAIN = 1.1
AGREEMENT = 1e-4  # float32: per-leaf relative, with margin for summation order


def problem(sizes, m, seed=0):
    """params, (x, integer labels), and the call's configuration, float32."""
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    params = fbp.init_mlp(kp, sizes)
    x = jax.random.normal(kx, (m, sizes[0]), jnp.float32)
    y = jax.random.randint(ky, (m,), 0, sizes[-1])
    kw = dict(activations=("relu",) * (len(sizes) - 2) + ("identity",),
              loss="softmax_cross_entropy")
    return params, x, y, kw


def reference(kw, clip_norm):
    """jitted (params, x, y) -> the clipped mean, by jax.vmap(jax.grad) of the plain objective."""
    def L_i(params, x_i, y_i):
        return fbp.objective(params, (x_i[None, :], y_i[None]), **kw)

    def clipped_mean(params, x, y):
        g = jax.vmap(jax.grad(L_i), in_axes=(None, 0, 0))(params, x, y)
        leaves = jax.tree_util.tree_leaves(g)
        norms = jnp.sqrt(sum(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1) for v in leaves))
        c = jnp.minimum(1.0, clip_norm / norms)
        return jax.tree_util.tree_map(lambda v: jnp.tensordot(c, v, axes=1) / x.shape[0], g)

    return jax.jit(clipped_mean)


def temp_bytes(fn, *args) -> float:
    """Temporary buffers of ``jax.jit(fn)``'s compiled program, from XLA (NaN if unknown)."""
    ma = jax.jit(fn).lower(*args).compile().memory_analysis()
    return float(ma.temp_size_in_bytes) if ma is not None else float("nan")


def max_rel_error(ours, ref) -> float:
    """Largest per-leaf max|a - b| / max|b|; inf if the leaves differ in number or shape."""
    errs = []
    if len(jax.tree_util.tree_leaves(ours)) != len(jax.tree_util.tree_leaves(ref)):
        return float("inf")
    for o, r in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        o, r = np.asarray(o, np.float64), np.asarray(r, np.float64)
        if o.shape != r.shape:
            return float("inf")
        scale = np.max(np.abs(r))
        errs.append(np.max(np.abs(o - r)) / scale if scale > 0 else np.max(np.abs(o)))
    return float(max(errs))


def _ready(fn):
    return lambda: jax.block_until_ready(fn())


def _optional(name, notes):
    try:
        return importlib.import_module(name)
    except ImportError:
        note = f"{name} is not installed: its rows are skipped (pip install {name.replace('_', '-')})"
        print("note:", note)
        notes.append(note)
        return None


# ----------------------------------------------------------------- JAX implementations

def jax_impls(params, x, y, kw, clip_norm, notes):
    """name -> (callable, result for the agreement check or None, temporary bytes)."""
    impls = {}
    ours = partial(fbp.clipped_grad, clip_norm=clip_norm, **kw)
    impls[OURS] = (lambda: ours(params, (x, y)), ours(params, (x, y)),
                   temp_bytes(lambda p, a, b: ours(p, (a, b)), params, x, y))

    m = x.shape[0]
    plans = {s: privacy.DPConfig(clip_norm=clip_norm, noise_multiplier=s, accountant=None).plan(
        num_examples=m, batch_size=m, steps=1) for s in (0.0, 1.0)}
    ones, key = jnp.ones((m,), jnp.float32), jax.random.key(0)
    step = {s: partial(privacy.private_batch_grad, plan=plans[s], **kw) for s in plans}
    impls[PRIVATE] = (lambda: step[1.0](params, (x, y), ones, key),
                      step[0.0](params, (x, y), ones, key),  # the same step without noise
                      temp_bytes(lambda p, a, b: step[1.0](p, (a, b), ones, key), params, x, y))
    impls[PRIVATE0] = (lambda: step[0.0](params, (x, y), ones, key),
                       step[0.0](params, (x, y), ones, key),
                       temp_bytes(lambda p, a, b: step[0.0](p, (a, b), ones, key), params, x, y))

    plain = partial(fbp.grad, **kw)
    impls[PLAIN] = (lambda: plain(params, (x, y)), None,
                    temp_bytes(lambda p, a, b: plain(p, (a, b)), params, x, y))

    ref = reference(kw, clip_norm)
    impls[REF] = (lambda: ref(params, x, y), ref(params, x, y), temp_bytes(ref, params, x, y))

    jp = _optional("jax_privacy", notes)
    if jp is not None:
        from jax_privacy import clipping

        def loss_fn(p, xb, yb):  # xb: one example with a batch axis of 1 (keep_batch_dim)
            return fbp.objective(p, (xb, yb), **kw)

        g = jax.jit(clipping.clipped_grad(loss_fn, l2_clip_norm=clip_norm, batch_argnums=(1, 2),
                                          normalize_by=float(m)))
        impls[JAXP] = (lambda: g(params, x, y), g(params, x, y), temp_bytes(g, params, x, y))
    return impls


def jax_privacy_variant_s(params, x, y, kw, clip_norm, *, jit, nan_safe, reps=2) -> float:
    """Seconds per call of a variant of jax-privacy's clipped_grad (after one untimed call)."""
    from jax_privacy import clipping

    def loss_fn(p, xb, yb):
        return fbp.objective(p, (xb, yb), **kw)

    g = clipping.clipped_grad(loss_fn, l2_clip_norm=clip_norm, batch_argnums=(1, 2),
                              normalize_by=float(x.shape[0]), nan_safe=nan_safe)
    g = jax.jit(g) if jit else g
    jax.block_until_ready(g(params, x, y))
    t0 = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(g(params, x, y))
    return (time.perf_counter() - t0) / reps


# ----------------------------------------------------------------- torch implementations

def torch_impls(params, x, y, clip_norm, notes):
    torch = _optional("torch", notes)
    if torch is None:
        return {}
    opacus = _optional("opacus", notes)
    if opacus is None:
        return {}
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    torch.set_num_threads(THREADS)
    m = x.shape[0]
    tx = torch.from_numpy(np.array(x))
    ty = torch.from_numpy(np.array(y, dtype=np.int64))

    def model():
        layers = []
        for l, p in enumerate(params):
            lin = torch.nn.Linear(*np.shape(p["W"]))
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.array(p["W"]).T.copy()))
                lin.bias.copy_(torch.from_numpy(np.array(p["b"])))
            layers.append(lin)
            if l < len(params) - 1:
                layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers)

    def grads_of(module):
        lins = [mod for mod in module.modules() if isinstance(mod, torch.nn.Linear)]
        return [{"W": lin.weight.grad.detach().numpy().T, "b": lin.bias.grad.detach().numpy()}
                for lin in lins]

    def optimizer(cls, module):
        return cls(torch.optim.SGD(module.parameters(), lr=0.0), noise_multiplier=0.0,
                   max_grad_norm=clip_norm, expected_batch_size=m, loss_reduction="mean")

    impls = {}
    ghost = GradSampleModuleFastGradientClipping(model(), max_grad_norm=clip_norm,
                                                 use_ghost_clipping=True, loss_reduction="mean")
    ghost_opt = optimizer(DPOptimizerFastGradientClipping, ghost)
    ghost_loss = DPLossFastGradientClipping(ghost, ghost_opt,
                                            torch.nn.CrossEntropyLoss(reduction="mean"),
                                            loss_reduction="mean")

    def ghost_step():
        ghost_opt.zero_grad(set_to_none=True)
        ghost_loss(ghost(tx), ty).backward()  # two backward passes: norms, then clipped sum
        ghost_opt.pre_step()  # noise (0) and the division by the expected batch size
        return ghost

    impls[GHOST] = (ghost_step, grads_of(ghost_step()), float("nan"))

    hooks = GradSampleModule(model(), loss_reduction="mean")
    hooks_opt = optimizer(DPOptimizer, hooks)
    criterion = torch.nn.CrossEntropyLoss(reduction="mean")

    def hooks_step():
        hooks_opt.zero_grad(set_to_none=True)
        criterion(hooks(tx), ty).backward()  # fills p.grad_sample (m x parameter shape)
        hooks_opt.pre_step()  # clip each row, sum, noise (0), divide by m
        return hooks

    impls[HOOKS] = (hooks_step, grads_of(hooks_step()), float("nan"))
    return impls


# ----------------------------------------------------------------- one shape

def run_shape(name, sizes, m, *, clip_norm, blocks, warmup, min_sample_s, settle_s, seed,
              notes, log=print):
    params, x, y, kw = problem(sizes, m, seed=seed)
    impls = jax_impls(params, x, y, kw, clip_norm, notes)
    impls.update(torch_impls(params, x, y, clip_norm, notes))
    ref = impls[REF][1]
    errors = {k: (max_rel_error(v[1], ref) if v[1] is not None else None)
              for k, v in impls.items()}
    log(f"[{name}] {sizes}/{m}: agreement with {REF}: "
        + ", ".join(f"{k} {e:.1e}" for k, e in errors.items() if e is not None and k != REF))
    runners = {k: (_ready(v[0]) if not k.startswith("opacus") else v[0])
               for k, v in impls.items()}
    t = timing.compare(runners, warmup=warmup, blocks=blocks, reps=1, min_sample_s=min_sample_s,
                       seed=seed, settle_s=settle_s)
    extra = {}
    if JAXP in impls:
        extra["not jitted"] = jax_privacy_variant_s(params, x, y, kw, clip_norm, jit=False,
                                                    nan_safe=True)
        extra["nan_safe=False"] = jax_privacy_variant_s(params, x, y, kw, clip_norm, jit=True,
                                                        nan_safe=False)
    return {"name": name, "sizes": sizes, "m": m, "timings": t, "errors": errors,
            "temp": {k: v[2] for k, v in impls.items()}, "extra": extra}


# ----------------------------------------------------------------- GPT and CNNs (layered networks)

LAYERED = ("gpt-tiny", "gpt-cpu", "gpt-large", "mnist1d-cnn", "2d-cnn")
DEFAULT_NETWORKS = ("mnist-wide", "small", "gpt-cpu", "mnist1d-cnn", "2d-cnn", "gpt-large")
GPT_SHAPES = {"gpt-tiny": "tiny", "gpt-cpu": "cpu", "gpt-large": "gpu"}  # gpt_bench's shapes
LOSS = "softmax_cross_entropy"
LR, BETAS, WEIGHT_DECAY = 1e-3, (0.9, 0.99), 0.1
TOL = 2e-5  # float32: of the leaf's scale, per leaf (the team's tolerance)
TORCH = "PyTorch (non-private)"
VG = "functional_bp.value_and_grad (non-private)"
STEP = "step: "  # prefix of the rows timing one training step with AdamW


def layered_problem(name, batch=None, seed=0):
    """(net, params, x, y, input shape, description, gpt shape or None), float32, same for all."""
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    if name.startswith("gpt-"):
        shape = dict(gpt_bench.SHAPES[GPT_SHAPES[name]])
        shape["m"] = batch or shape["m"]
        net = fbp.models.gpt(vocab_size=shape["V"], block_size=shape["T"],
                             n_layer=shape["n_layer"], n_head=shape["n_head"],
                             n_embd=shape["n_embd"], dropout=0.0, bias=False)
        params = net.init(kp, (shape["T"],))  # untied head, initialised on its own
        x = jax.random.randint(kx, (shape["m"], shape["T"]), 0, shape["V"])
        y = jax.random.randint(ky, (shape["m"], shape["T"]), 0, shape["V"])
        what = (f"models.gpt(vocab_size={shape['V']}, block_size={shape['T']}, "
                f"n_layer={shape['n_layer']}, n_head={shape['n_head']}, "
                f"n_embd={shape['n_embd']}, dropout=0.0, bias=False), tokens and labels "
                f"({shape['m']}, {shape['T']})")
        return net, params, x, y, (shape["T"],), what, shape
    net, input_shape, m = cnn_bench.problems()[name]
    m = batch or m
    params = net.init(kp, input_shape)
    x = jax.random.normal(kx, (m, *input_shape), jnp.float32)
    y = jax.random.randint(ky, (m,), 0, 10)
    what = f"cnn_bench's {name}, inputs {(m, *input_shape)}, 10 classes"
    return net, params, x, y, tuple(input_shape), what, None


class Route:
    """One implementation: its call, its result for the agreement check, its memory."""

    def __init__(self, name, call, result=None, against=REF, memory=float("nan"), step=None,
                 step_memory=float("nan"), kind="XLA temp"):
        self.name, self.call, self.result, self.against = name, call, result, against
        self.memory, self.step, self.step_memory, self.kind = memory, step, step_memory, kind


def _mem_available() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def layered_jax_routes(net, params, x, y, clip_norm, notes, skipped, steps=True):
    """name -> Route for ours, our value_and_grad, the vmap route and jax-privacy (jitted).

    Each gradient, and with ``steps`` each training step (``gpt_bench.train_step``:
    the gradient, then optax's AdamW update applied; the clipped routes compute no
    loss and hand it a 0), is compiled once; the compiled program is what is called,
    timed and measured (XLA's temporary bytes).
    """
    kw = dict(network=net, loss=LOSS)
    y_t = _validate.prepare_model(params, (x, y), net, LOSS)[4]
    m = x.shape[0]
    grads = {
        OURS: (lambda p, a, b: fbp.clipped_grad(p, (a, b), clip_norm=clip_norm, **kw), y),
        VG: (lambda p, a, b: fbp.value_and_grad(p, (a, b), **kw), y),
        REF: (vmap_route(net, clip_norm), y_t),
    }
    jp = _optional("jax_privacy", notes)
    if jp is not None:
        from jax_privacy import clipping

        def loss_fn(p, xb, yb):  # one example with a batch axis of 1 (keep_batch_dim)
            return fbp.objective(p, (xb, yb), **kw)

        grads[JAXP] = (clipping.clipped_grad(loss_fn, l2_clip_norm=clip_norm,
                                             batch_argnums=(1, 2), normalize_by=float(m)), y)
    optimizer = make_optimizer("adamw", LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    state = optimizer.init(params)
    routes, available = {}, _mem_available()
    for name, (f, labels) in grads.items():
        with_loss = (f if name == VG else
                     (lambda p, a, b, f=f: (jnp.zeros((), jnp.float32), f(p, a, b))))
        step = train_step(with_loss, optimizer)
        try:
            g_c = jax.jit(f).lower(params, x, labels).compile()
            s_c = step.lower(params, state, x, labels).compile() if steps else None
        except Exception as e:  # noqa: BLE001 - reported in the table, not hidden
            skipped[name] = f"did not compile: {type(e).__name__}: {str(e)[:200]}"
            continue
        mem = [float(c.memory_analysis().temp_size_in_bytes)
               if c is not None and c.memory_analysis() is not None else float("nan")
               for c in (g_c, s_c)]
        need = max(v for v in mem if v == v) if any(v == v for v in mem) else 0.0
        if need > 0.8 * available:
            skipped[name] = (f"needs {report.fmt_bytes(need)} of temporary memory (XLA's "
                             f"memory_analysis), {report.fmt_bytes(available)} available")
            continue
        call = partial(g_c, params, x, labels)
        routes[name] = Route(name, call, None, against=VG if name == VG else REF,
                             memory=mem[0], step_memory=mem[1],
                             step=partial(s_c, params, state, x, labels) if steps else None)
    return routes


def layered_torch_routes(twin, x, y, clip_norm, notes, skipped, steps=True):
    """name -> Route for PyTorch (non-private), Opacus ghost clipping and per-sample hooks."""
    import torch
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    from dp_peers_torch import decay_groups

    torch.set_num_threads(THREADS)
    m = x.shape[0]
    tx = torch.from_numpy(np.array(x) if twin.sequence else np.array(x, np.float32))
    ty = torch.from_numpy(np.array(y, dtype=np.int64))
    flat = (lambda z: z.reshape(-1, z.shape[-1])) if twin.sequence else (lambda z: z)
    ty_flat = ty.reshape(-1)
    shape = tuple(ty.shape) if twin.sequence else None

    def adamw(model):
        return torch.optim.AdamW(decay_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS)

    def dp(cls, opt):
        return cls(opt, noise_multiplier=0.0, max_grad_norm=clip_norm, expected_batch_size=m,
                   loss_reduction="mean")

    routes, builders = {}, {}

    def plain():
        model = twin.make()
        opt, ce = adamw(model), torch.nn.CrossEntropyLoss(reduction="mean")

        def grad():
            opt.zero_grad(set_to_none=True)
            ce(flat(model(tx)), ty_flat).backward()
            return model

        def step():
            grad()
            opt.step()
        return model, grad, step

    def ghost():
        model = GradSampleModuleFastGradientClipping(
            twin.make(), max_grad_norm=clip_norm, use_ghost_clipping=True, loss_reduction="mean")
        opt = dp(DPOptimizerFastGradientClipping, adamw(model))
        loss = DPLossFastGradientClipping(model, opt, torch.nn.CrossEntropyLoss(reduction="mean"),
                                          loss_reduction="mean")

        def backward():
            opt.zero_grad(set_to_none=True)
            # the loss per sequence is the mean over its T positions (shape=(B, T))
            loss(flat(model(tx)), ty_flat, shape=shape).backward()  # two backward passes

        def grad():
            backward()
            opt.pre_step()  # noise (0) and the division by the expected batch size
            return model

        def step():
            backward()
            opt.step()
        return model, grad, step

    def hooks():
        model = GradSampleModule(twin.make(), loss_reduction="mean")
        opt = dp(DPOptimizer, adamw(model))
        ce = torch.nn.CrossEntropyLoss(reduction="mean")

        def backward():
            opt.zero_grad(set_to_none=True)
            ce(flat(model(tx)), ty_flat).backward()  # p.grad_sample (B x parameter shape)

        def grad():
            backward()
            opt.pre_step()  # clip each row, sum, noise (0), divide by m
            return model

        def step():
            backward()
            opt.step()
        return model, grad, step

    builders = {TORCH: plain, GHOST: ghost, HOOKS: hooks}
    for name, build in builders.items():
        try:
            model, grad, step = build()
            grad()
        except Exception as e:  # noqa: BLE001 - reported in the table, not hidden
            skipped[name] = f"failed: {type(e).__name__}: {str(e)[:300]}"
            continue
        routes[name] = Route(name, grad, None, against=VG if name == TORCH else REF,
                             step=step if steps else None, kind="PyTorch peak allocated")
        routes[name].twin_grads = partial(twin.grads, model)
    return routes


def run_layered(name, *, clip_norm, blocks, warmup, min_sample_s, settle_s, seed, batch,
                check_examples, max_call_s, nanogpt, notes, steps=True, slow_s=None,
                slow_blocks=1, log=print):
    """Agreement, memory and times of every implementation on one GPT or CNN.

    ``steps``: also time each implementation's training step with AdamW.
    ``slow_s``: when some implementation's first call took longer, the
    network is timed in at most ``slow_blocks`` blocks of one call per
    implementation, without warm-up or settling calls.
    """
    net, params, x, y, input_shape, what, gshape = layered_problem(name, batch, seed)
    m = x.shape[0]
    skipped, errors, stock = {}, {}, {}

    def build(xb, yb):
        routes = layered_jax_routes(net, params, xb, yb, clip_norm, notes, skipped, steps)
        torch_mod = _optional("torch", notes) and _optional("opacus", notes)
        if torch_mod is not None:
            import dp_peers_torch

            if gshape is not None:
                if nanogpt is None:
                    note = (f"{name}: no --nanogpt folder given: the PyTorch and Opacus rows "
                            "are skipped")
                    notes.append(note)
                    print("note:", note)
                    return routes
                twin = dp_peers_torch.gpt_twin(Path(nanogpt), net, params, dict(gshape))
                if not stock:  # once per network, on 2 sequences: Opacus's ghost mode on
                    stock.update(dp_peers_torch.stock_ghost_check(  # nanoGPT as it is
                        Path(nanogpt), params, dict(gshape), xb[:2], yb[:2], clip_norm))
            else:
                twin = dp_peers_torch.cnn_twin(net, params, input_shape)
            routes.update(layered_torch_routes(twin, xb, yb, clip_norm, notes, skipped, steps))
        return routes

    def first_call(k, r):
        """One call of route r on the batch it was built for; its result, or None if it failed.

        A PyTorch route's call runs under the profiler: its memory is read off this call.
        """
        t0 = time.perf_counter()
        try:
            if hasattr(r, "twin_grads"):
                import dp_peers_torch

                r.memory = dp_peers_torch.peak_allocated(r.call)
                out = r.twin_grads()
            else:
                out = jax.block_until_ready(r.call())
                out = out[1] if k == VG else out
        except Exception as e:  # noqa: BLE001 - reported in the table, not hidden
            skipped[k] = f"failed: {type(e).__name__}: {str(e)[:300]}"
            out = None
        r.first_s = time.perf_counter() - t0
        return out

    def agreement(routes):
        res = {k: first_call(k, r) for k, r in routes.items()}
        res = {k: v for k, v in res.items() if v is not None}
        for k in res:
            against = routes[k].against
            if against in res:
                errors[k] = (max_rel_error(res[k], res[against]), against)

    k = m if check_examples is None else min(check_examples, m)
    t0 = time.perf_counter()
    if k < m:  # the agreement on the first k examples, every implementation built for them
        agreement(build(x[:k], y[:k]))
        failed_on_k = {kk: f"on {k} examples: {v}" for kk, v in skipped.items()}
        skipped.clear()
    routes = build(x, y)
    log(f"[{name}] {len(routes)} implementations built in {time.perf_counter() - t0:.0f} s")
    if k == m:
        agreement(routes)
    else:  # the first call of each on the whole batch (the slow-call rule, PyTorch's memory)
        for kk, r in routes.items():
            first_call(kk, r)
        for kk, v in failed_on_k.items():
            skipped.setdefault(kk, v)
    log(f"[{name}] agreement on {k} of {m} examples: " + ", ".join(
        f"{kk} {e:.1e} (vs {a})" for kk, (e, a) in errors.items() if kk not in (REF, VG)))
    for kk, r in list(routes.items()):
        if kk in skipped:
            del routes[kk]
        elif max_call_s is not None and r.first_s > max_call_s:
            skipped[kk] = (f"one call took {r.first_s:.1f} s (over --max-call-s "
                           f"{max_call_s:g}): not timed in the blocks")
            del routes[kk]
    for kk, r in routes.items():  # each step's first call, untimed (PyTorch's memory read off it)
        if r.step is None:
            continue
        t1 = time.perf_counter()
        try:
            if hasattr(r, "twin_grads"):
                import dp_peers_torch

                r.step_memory = dp_peers_torch.peak_allocated(r.step)
            else:
                jax.block_until_ready(r.step())
        except Exception as e:  # noqa: BLE001 - reported in the table, not hidden
            skipped[STEP + kk] = f"failed: {type(e).__name__}: {str(e)[:300]}"
            r.step = None
            continue
        took = time.perf_counter() - t1
        r.first_s = max(r.first_s, took)
        if max_call_s is not None and took > max_call_s:
            skipped[STEP + kk] = (f"one call took {took:.1f} s (over --max-call-s "
                                  f"{max_call_s:g}): not timed in the blocks")
            r.step = None
    runners = {}
    for kk, r in routes.items():
        runners[kk] = _ready(r.call) if not hasattr(r, "twin_grads") else r.call
        if r.step is not None:
            runners[STEP + kk] = _ready(r.step) if not hasattr(r, "twin_grads") else r.step
    slowest = max((r.first_s for r in routes.values()), default=0.0)
    slow = slow_s is not None and slowest > slow_s
    if slow:  # calls of seconds: one call per sample, no warm-up beyond the first, no settling
        warmup, min_sample_s, settle_s, blocks = 0, 0.0, None, min(blocks, slow_blocks)
    log(f"[{name}] timing {len(runners)} calls in {blocks} blocks"
        + (f" (slow: the slowest first call took {slowest:.1f} s)" if slow else ""))
    t = timing.compare(runners, warmup=warmup, blocks=blocks, reps=1, min_sample_s=min_sample_s,
                       seed=seed, settle_s=settle_s) if runners else {}
    for kk, v in t.items():
        log(f"  {kk:<52} {fmt_time(v.median)}")
    n_params = sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(params))
    for variant, outcome in stock.items():
        log(f"[{name}] Opacus ghost clipping on {variant}: {outcome}")
    return {"name": name, "what": what, "m": m, "checked": k, "timings": t, "errors": errors,
            "skipped": skipped, "n_params": n_params, "stock": stock,
            "slow": (slowest, blocks) if slow else None,
            "memory": {kk: (r.memory, r.step_memory, r.kind) for kk, r in routes.items()}}


def _settle(args) -> str:
    if args.settle_s is None:
        return "no settling pause or untimed call at a switch"
    return f"{args.settle_s:g} s settling pause and one untimed call at each switch"


def render_layered(results, *, label, command, machine, versions, date, elapsed, notes,
                   args) -> str:
    out = [f"## {label}\n",
           f"Written by `benchmarks/dp_peers.py` on {date}, {elapsed / 60:.1f} min. Command:\n",
           f"```\n{command}\n```\n", report.kv_table(machine), "",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in versions) + ".\n",
           "Each private implementation computes the clipped mean (1/m) Σ clip(g_i, C) of one "
           f"batch (C = {args.clip_norm:g}, no noise, float32, {THREADS} threads; for the GPT "
           "an example is one sequence and its loss the mean over its T positions) from the "
           "same weights and data; the non-private rows compute the plain mean gradient. "
           "PyTorch and Opacus run nanoGPT's own `model.py` (head untied and positions "
           "expanded to (B, T), see `benchmarks/dp_peers_torch.py`) and PyTorch twins of the "
           "CNNs, weights copied from ours. *step:* rows (absent with `--no-steps`): the "
           "gradient and one AdamW update "
           f"(lr {LR:g}, betas {BETAS}, weight decay {WEIGHT_DECAY:g} on the tensors with two "
           "or more axes; optax for JAX, `torch.optim.AdamW` under Opacus's DP optimizer for "
           "Opacus). Times: medians over "
           f"{args.blocks} randomised alternating blocks (samples of at least "
           f"{args.min_sample_s:g} s, {_settle(args)}); *× ours*: the paired ratio to "
           "`functional_bp.clipped_grad` (to its step for the step rows). Error: largest per-leaf max|a−b|/max|b| against the "
           f"named reference (tolerance {TOL:g}). Memory: for JAX, XLA's `memory_analysis()` "
           "temporary buffers of the compiled program (arguments and outputs not counted); "
           "for PyTorch, the peak of the bytes allocated through PyTorch's CPU allocator "
           "during one call (the first on the whole batch, of the gradient and of the step), net "
           "of before, from `torch.profiler`'s allocation events: it "
           "includes the gradients (and Opacus's per-sample gradients) the call leaves "
           "allocated and misses the BLAS/oneDNN libraries' own scratch space, so the two "
           "columns are of the same kind but not identical in scope.\n"]
    targets = []
    for r in results:
        t = r["timings"]
        out.append(f"### {r['name']}: {r['what']}, {r['n_params']:,} parameters\n")
        out.append(f"Agreement checked on {r['checked']} of {r['m']} examples."
                   + (f" Timed as a slow network (the slowest first call took "
                      f"{r['slow'][0]:.1f} s, over --slow-s {args.slow_s:g}): {r['slow'][1]} "
                      "block(s) of one call per implementation, no warm-up or settling call."
                      if r.get("slow") else "") + "\n")
        rows = []
        for prefix, col in (("", 0), (STEP, 1)):
            base = t.get(prefix + OURS)
            for name in [OURS, VG, REF, JAXP, TORCH, GHOST, HOOKS]:
                key = prefix + name
                if key in t:
                    lo, hi = t[key].iqr
                    mem, kind = r["memory"][name][col], r["memory"][name][2]
                    err = r["errors"].get(name)
                    rows.append([key, f"{fmt_time(t[key].median)} ({fmt_time(lo)}–{fmt_time(hi)})",
                                 f"{timing.paired_ratio(t[key], base):.2f}" if base else "—",
                                 "—" if mem != mem else f"{report.fmt_bytes(mem)} ({kind})",
                                 "—" if err is None or prefix or name in (REF, VG) else
                                 f"{err[0]:.1e} vs {err[1]}"])
                elif key in r["skipped"] or (name in r["skipped"] and not prefix):
                    rows.append([key, "not timed: " + r["skipped"].get(key, r["skipped"].get(name)),
                                 "—", "—", "—"])
        out.append(table(["implementation", "median (IQR)", "× ours", "memory", "error"], rows))
        out.append("")
        if r.get("stock"):
            out.append("Opacus's ghost clipping on nanoGPT's model without this benchmark's "
                       "changes (one forward and backward each, on 2 sequences): " + "; ".join(
                           f"{k}: {v}" for k, v in r["stock"].items()) + ".\n")
        if OURS in t and VG in t:
            ratio = timing.paired_ratio(t[OURS], t[VG])
            targets.append((f"{r['name']}: clipped_grad / our value_and_grad ≤ 1.3",
                            f"{ratio:.2f}", ratio <= 1.3))
        for peer in (REF, JAXP, GHOST, HOOKS):
            if OURS in t and peer in t:
                pr = timing.paired_ratio(t[peer], t[OURS])
                targets.append((f"{r['name']}: `clipped_grad` faster than {peer}",
                                f"{peer} takes {pr:.2f}× ours", pr > 1))
            elif peer in r["skipped"]:
                targets.append((f"{r['name']}: `clipped_grad` faster than {peer}",
                                f"{peer} not timed ({r['skipped'][peer][:80]})", None))
        bad = [f"{k} ({e:.1e})" for k, (e, _) in r["errors"].items() if e > TOL]
        targets.append((f"{r['name']}: every implementation agrees within {TOL:g}",
                        ", ".join(bad) if bad else "all", not bad))
    out.append("### Targets\n")
    out.append(table(["target", "measured", "held"],
                     [[a, b, "not measured" if ok is None else "yes" if ok else "**no**"]
                      for a, b, ok in targets]))
    if notes:
        out.append("\n### Notes\n")
        out += [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------- the private step's cost

def step_cost(sizes, m, num_examples, *, clip_norm, blocks, warmup, min_sample_s, seed,
              log=print):
    """Where the private step's time goes, against the non-private step on m rows.

    - the non-private gradient on m rows (``functional_bp.grad``);
    - ``private_batch_grad`` on m rows (capacity = the expected batch size),
      sigma = 0 (clipping alone) and sigma = 1 (clipping and noise);
    - ``private_batch_grad`` on the default Poisson capacity for N =
      ``num_examples`` (more rows than m: the padding of the fixed shape),
      sigma = 1, with m real rows;
    - the noise alone: ``privacy.gaussian_noise`` of the params' shape, jitted;
    - ``private_grad``: the whole step of fit, the Poisson sample drawn from N
      examples, gathered, clipped at the default capacity, noised.
    """
    params, x, y, kw = problem(sizes, m, seed=seed)
    q_plan = privacy.DPConfig(clip_norm=clip_norm, noise_multiplier=1.0).plan(
        num_examples=num_examples, batch_size=m, steps=1)
    cap = q_plan.capacity
    plans = {s: privacy.DPConfig(clip_norm=clip_norm, noise_multiplier=s, accountant=None).plan(
        num_examples=m, batch_size=m, steps=1) for s in (0.0, 1.0)}
    key = jax.random.key(seed)
    ones = jnp.ones((m,), jnp.float32)
    kx = jax.random.fold_in(key, 1)
    x_big = jax.random.normal(kx, (cap, sizes[0]), jnp.float32).at[:m].set(x)
    y_big = jnp.zeros((cap,), y.dtype).at[:m].set(y)
    w_big = jnp.zeros((cap,), jnp.float32).at[:m].set(1.0)
    X = jax.random.normal(kx, (num_examples, sizes[0]), jnp.float32)
    Y = jax.random.randint(kx, (num_examples,), 0, sizes[-1])
    noise = jax.jit(lambda k: privacy.gaussian_noise(k, params, 1.0))
    names = {
        "non-private grad, m rows": lambda: fbp.grad(params, (x, y), **kw),
        "private, m rows, sigma=0": lambda: privacy.private_batch_grad(
            params, (x, y), ones, key, plans[0.0], **kw),
        "private, m rows, sigma=1": lambda: privacy.private_batch_grad(
            params, (x, y), ones, key, plans[1.0], **kw),
        f"private, capacity {cap} rows, sigma=1": lambda: privacy.private_batch_grad(
            params, (x_big, y_big), w_big, key, q_plan, **kw),
        "noise alone (one normal per parameter)": lambda: noise(key),
        f"private_grad: Poisson sample of N={num_examples}, capacity {cap}": lambda: (
            privacy.private_grad(params, (X, Y), key, q_plan, **kw)),
    }
    t = timing.compare({k: _ready(v) for k, v in names.items()}, warmup=warmup, blocks=blocks,
                       reps=1, min_sample_s=min_sample_s, seed=seed)
    flops = {}  # XLA's count for the compiled programs: is the gap arithmetic?
    for k, f in [("plain", lambda p, a, b: fbp.grad(p, (a, b), **kw)),
                 ("private", lambda p, a, b: privacy.private_batch_grad(
                     p, (a, b), ones, key, plans[0.0], **kw))]:
        c = jax.jit(f).lower(params, x, y).compile().cost_analysis()
        c = c[0] if isinstance(c, list) else c
        flops[k] = float((c or {}).get("flops", float("nan")))
    base = t["non-private grad, m rows"]
    rows = [(k, fmt_time(v.median), f"{timing.paired_ratio(v, base):.2f}")
            for k, v in t.items()]
    for r in rows:
        log("  ".join(r))
    return {"sizes": sizes, "m": m, "N": num_examples, "capacity": cap, "rows": rows,
            "n_params": sum(int(v.size) for v in jax.tree_util.tree_leaves(params)),
            "timings": t, "flops": flops}


def render_step_cost(r, *, label, command, machine, versions, date, elapsed) -> str:
    t = r["timings"]
    med = {k: v.median for k, v in t.items()}
    plain = med["non-private grad, m rows"]
    keys = list(med)
    clip_only, with_noise, padded, noise_only, full = (med[k] for k in keys[1:])
    out = [f"## {label}\n", f"Command: `{command}` ({date}, {elapsed:.0f} s)\n"]
    out += [f"- {k}: {v}" for k, v in machine + versions]
    out += ["", f"Shape {r['sizes']}, expected batch m = {r['m']} of N = {r['N']} "
            f"(default capacity {r['capacity']} rows), float32, {r['n_params']:,} parameters. "
            "Medians of alternating blocks; ratio = paired median against the non-private "
            "gradient on m rows.", ""]
    out.append(table(["step", "median", "/ non-private"], r["rows"]))
    out += ["", "### What the time of the private step is made of", "",
            f"- clipping (norms from the deltas, the weighted backward): "
            f"{fmt_time(clip_only - plain)} over the non-private step "
            f"({clip_only / plain:.2f}x);",
            f"- the noise: drawing {r['n_params']:,} normals costs {fmt_time(noise_only)} on "
            f"its own; in the step it adds {fmt_time(with_noise - clip_only)} "
            f"({(with_noise - clip_only) / plain:.0%} of the non-private step);",
            f"- the padding of the default capacity ({r['capacity']} rows for an expected "
            f"{r['m']}): {fmt_time(padded - with_noise)} "
            f"({padded / with_noise:.2f}x the step on m rows);",
            f"- fit's whole step (the Poisson mask over N, the gather, the chunk loop): "
            f"{fmt_time(full - padded)} over the padded step;",
            f"- arithmetic: XLA counts {r['flops']['private']:.3g} flops for the private "
            f"step (sigma=0) against {r['flops']['plain']:.3g} for the non-private one "
            f"({r['flops']['private'] / r['flops']['plain']:.2f}x): the clipping's extra "
            "time is not extra arithmetic but how the compiled program moves memory.", "",
            "Measured cause, largest share first: " + "; ".join(
                f"{name} {fmt_time(v)} ({v / plain:.0%} of the non-private step)"
                for name, v in sorted(
                    [("the clipped backward (sigma=0 over non-private)", clip_only - plain),
                     ("the noise (sigma=1 over sigma=0)", with_noise - clip_only),
                     (f"the padding to capacity {r['capacity']}", padded - with_noise),
                     ("the Poisson sampling and gather", full - padded)],
                    key=lambda kv: -kv[1])) + ". A capacity equal to the expected batch "
            "size (``plan(..., capacity=m)``, allowed: a larger sample then takes a second "
            "chunk) removes the padding's share only.", "",
            "Note: the peers table above times `private_batch_grad` with a plan of "
            "N = m (q = 1), whose capacity is m: its ratio to the non-private step does "
            "not include the padding."]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------- report

def render(results, *, label, command, machine, versions, date, elapsed, notes, args) -> str:
    out = [f"## {label}\n",
           f"Written by `benchmarks/dp_peers.py` on {date}, {elapsed / 60:.1f} min. Command:\n",
           f"```\n{command}\n```\n", report.kv_table(machine), "",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in versions) + ".\n",
           "Each implementation computes the clipped mean (1/m) Σ clip(g_i, C) of one batch "
           f"(C = {args.clip_norm:g}, float32, {THREADS} threads) from the same weights and data. "
           f"Times: medians over {args.blocks} randomised alternating blocks (samples of at least "
           f"{args.min_sample_s:g} s, {_settle(args)}); *× ours*: the paired ratio of its time "
           "to `functional_bp.clipped_grad`'s. "
           "Error: largest per-leaf max|a−b|/max|b| against "
           f"`{REF}` (the private step checked with sigma = 0). Temporary memory: XLA's "
           "`memory_analysis()` of the compiled program (JAX only).\n"]
    targets = []
    for r in results:
        t = r["timings"]
        out.append(f"### {r['name']}: {r['sizes']}, batch {r['m']}\n")
        rows = []
        for k in t:
            lo, hi = t[k].iqr
            err = r["errors"][k]
            rows.append([k, f"{fmt_time(t[k].median)} ({fmt_time(lo)}–{fmt_time(hi)})",
                         f"{timing.paired_ratio(t[k], t[OURS]):.2f}",
                         "—" if r["temp"][k] != r["temp"][k] else report.fmt_bytes(r["temp"][k]),
                         "—" if err is None else f"{err:.1e}"])
        out.append(table(["implementation", "median (IQR)", "× ours", "temporary memory",
                          "error"], rows))
        ratio = timing.paired_ratio(t[PRIVATE], t[PLAIN])
        targets.append((f"{r['name']}: private step / non-private step ≤ "
                        f"{TARGET_PRIVATE_OVER_PLAIN}", f"{ratio:.2f}",
                        ratio <= TARGET_PRIVATE_OVER_PLAIN))
        for peer in (GHOST, JAXP):
            if peer in t:
                pr = timing.paired_ratio(t[peer], t[OURS])
                targets.append((f"{r['name']}: `clipped_grad` faster than {peer}",
                                f"{peer} takes {pr:.1f}× ours", pr > 1))
        bad = [k for k, e in r["errors"].items() if e is not None and e > AGREEMENT]
        if bad:
            notes.append(f"**{r['name']}**: {', '.join(bad)} disagree with the reference by more "
                         f"than {AGREEMENT:g}: their times compare different work.")
        if "not jitted" in r["extra"]:
            un, ns = r["extra"]["not jitted"], r["extra"]["nan_safe=False"]
            notes.append(
                f"**{r['name']}**, jax-privacy: {fmt_time(t[JAXP].median)} under `jax.jit` "
                f"against {fmt_time(t[REF].median)} for the plain vmap route; "
                f"{fmt_time(ns)} jitted with `nan_safe=False` (no `nan_to_num` pass), and "
                f"{fmt_time(un)} per call when `clipped_grad`'s function is called as returned, "
                "without `jax.jit` (each call then traces and dispatches op by op); these two "
                "from 2 back-to-back calls, outside the alternating blocks. Its "
                "temporary memory is "
                f"{report.fmt_bytes(r['temp'][JAXP])} against {report.fmt_bytes(r['temp'][REF])} "
                "for the vmap route.")
    out.append("\n### Targets\n")
    out.append(table(["target", "measured", "held"],
                     [[a, b, "yes" if ok else "**no**"] for a, b, ok in targets]))
    out.append("\n### Why jax-privacy is slow here\n")
    out.append(
        "Read from its source (`jax_privacy/clipping.py`, version in the list above): "
        "`clipped_grad` is `clipped_fun` over `jax.value_and_grad(fun)`; `clipped_fun` maps "
        "`clip_pytree` over the examples with `optax.microbatching.micro_vmap` (a plain "
        "`jax.vmap` when `microbatch_size` is None, else a `fori_loop` over vmapped "
        "microbatches) and sums. Every example's full gradient is therefore formed "
        "(m × number of parameters floats) and then scaled: it is the vmap route, with "
        "`nan_to_num` of every leaf (`nan_safe=True`), the global norm, the scale and a "
        "`select` zeroing padding examples on top. The package has no ghost-clipping or "
        "norm-from-activations path: `microbatch_size` lowers memory and keeps the "
        "per-example gradients, so its intended fast path is this jitted vmap route. The "
        "notes below measure two suspects: turning `nan_safe` off and calling it without "
        "`jax.jit`; what they leave of its gap to the plain vmap route in the table is not "
        "explained by the source reading above (both routes form the same per-example "
        "gradients of the same objective) and was not traced further in this run.")
    if notes:
        out.append("\n### Notes\n")
        out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", nargs="+", choices=list(SHAPES) + list(LAYERED),
                    default=None, metavar="NET",
                    help=f"among {', '.join(list(SHAPES) + list(LAYERED))} [default: "
                         f"{' '.join(DEFAULT_NETWORKS)}]")
    ap.add_argument("--shapes", default=None,
                    help=f"the MLP shapes only, comma-separated, among {', '.join(SHAPES)}")
    ap.add_argument("--nanogpt", default=None,
                    help="nanoGPT's folder (its model.py): the PyTorch and Opacus rows of the GPT")
    ap.add_argument("--batch", type=int, default=None,
                    help="the batch of every GPT and CNN (default: each network's own)")
    ap.add_argument("--check-examples", type=int, default=None,
                    help="GPT and CNNs: check the agreement on the first K examples (every "
                         "implementation built again for them) [default: the whole batch]")
    ap.add_argument("--max-call-s", type=float, default=None,
                    help="GPT and CNNs: an implementation whose first call takes longer is "
                         "reported with that time and not timed in the blocks")
    ap.add_argument("--slow-s", type=float, default=10.0,
                    help="GPT and CNNs: a network where some first call takes longer is timed "
                         "in --slow-blocks blocks of one call each, no warm-up, no settling")
    ap.add_argument("--slow-blocks", type=int, default=1)
    ap.add_argument("--no-steps", action="store_true",
                    help="GPT and CNNs: time the clipped gradient only, not the AdamW steps")
    ap.add_argument("--clip-norm", type=float, default=CLIP_NORM)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--min-sample-s", type=float, default=0.2)
    ap.add_argument("--settle-s", type=float, default=0.5,
                    help="pause before each switch, then one untimed call; negative: neither")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default=None)
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--step-cost", action="store_true",
                    help="only the private step's cost study (its own block)")
    a = ap.parse_args(argv)
    if a.settle_s < 0:
        a.settle_s = None  # no pause and no untimed call at each switch (steps of seconds)
    if a.step_cost:
        return main_step_cost(a, argv)
    shapes = [s for s in (a.shapes or "").split(",") if s]
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"unknown shape {s!r}; valid: {', '.join(SHAPES)}")
    networks = list(a.networks or ([] if shapes else DEFAULT_NETWORKS))
    shapes = list(dict.fromkeys(shapes + [n for n in networks if n in SHAPES]))
    layered = [n for n in networks if n in LAYERED]
    command = "python " + shlex.join(["benchmarks/dp_peers.py"]
                                     + (sys.argv[1:] if argv is None else list(argv)))
    label = a.label or f"DP-SGD peers: {report.default_label()}"
    machine = report.machine()
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    started, notes, results = time.perf_counter(), [], []
    for s in shapes:
        sizes, m = SHAPES[s]
        results.append(run_shape(s, sizes, m, clip_norm=a.clip_norm, blocks=a.blocks,
                                 warmup=a.warmup, min_sample_s=a.min_sample_s,
                                 settle_s=a.settle_s, seed=a.seed, notes=notes))
    mlp_elapsed = time.perf_counter() - started
    l_notes, l_results = [], []
    for n in layered:
        l_results.append(run_layered(n, clip_norm=a.clip_norm, blocks=a.blocks,
                                     warmup=a.warmup, min_sample_s=a.min_sample_s,
                                     settle_s=a.settle_s, seed=a.seed, batch=a.batch,
                                     check_examples=a.check_examples, max_call_s=a.max_call_s,
                                     nanogpt=a.nanogpt, notes=l_notes, steps=not a.no_steps,
                                     slow_s=a.slow_s, slow_blocks=a.slow_blocks))
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()
    machine.append(("load average at end", " ".join(f"{v:.2f}" for v in load_end)))
    versions = report.versions()
    for name in ("opacus", "jax-privacy", "dp-accounting"):
        try:
            versions.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            versions.append((name, "not installed"))
    if results:
        body = render(results, label=label, command=command, machine=machine,
                      versions=versions, date=report.now(), elapsed=mlp_elapsed, notes=notes,
                      args=a)
        report.write_block(Path(a.out), label, body)
        print(body)
    if l_results:
        l_label = label + ", GPT and CNNs"
        body = render_layered(l_results, label=l_label, command=command, machine=machine,
                              versions=versions, date=report.now(),
                              elapsed=elapsed - mlp_elapsed, notes=l_notes, args=a)
        report.write_block(Path(a.out), l_label, body)
        print(body)
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in load_end)}; wrote {a.out}")
    return 0


def main_step_cost(a, argv) -> int:
    command = "python " + shlex.join(["benchmarks/dp_peers.py"]
                                     + (sys.argv[1:] if argv is None else list(argv)))
    label = (a.label or f"DP-SGD peers: {report.default_label()}") + ", the private step's cost"
    machine = report.machine()
    started = time.perf_counter()
    sizes, m = SHAPES["mnist-wide"]
    r = step_cost(sizes, m, 60000, clip_norm=a.clip_norm, blocks=max(a.blocks, 5),
                  warmup=a.warmup, min_sample_s=a.min_sample_s, seed=a.seed)
    machine.append(("load average at end", " ".join(f"{v:.2f}" for v in os.getloadavg())))
    body = render_step_cost(r, label=label, command=command, machine=machine,
                            versions=report.versions(), date=report.now(),
                            elapsed=time.perf_counter() - started)
    report.write_block(Path(a.out), label, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
