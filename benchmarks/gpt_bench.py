"""A GPT (nanoGPT's architecture): our hand-derived backward, the clipped gradient, the training step.

Shapes (float32, ``functional_bp.models.gpt(..., dropout=0.0, bias=False)``,
integer tokens and labels (m, T), softmax cross-entropy):

- ``cpu``: nanoGPT's CPU run, 4 layers, 4 heads, 128 wide, T 64, batch 12,
  vocabulary 65;
- ``gpu``: nanoGPT's GPU run on characters, 6 layers, 6 heads, 384 wide,
  T 256, batch 64, vocabulary 65 (a few steps suffice: ``--gpu-blocks``);
- ``tiny``: 1 layer, 2 heads, 16 wide, T 8, batch 3 (the smoke test only).

The head is initialised to the token embedding's transpose, so that the same
numbers are nanoGPT's tied model (``lm_head.weight`` is ``wte.weight``
there); ours trains the two as separate arrays, so its gradients map onto
nanoGPT's by adding the head's to the embedding's.

Implementations, on the same params and batch:

- ``ours``: ``fbp.value_and_grad(params, (x, y), network=net,
  loss="softmax_cross_entropy")``, the public call, jitted (its input checks
  run while tracing);
- ``jax.value_and_grad``: ``jax.jit(jax.value_and_grad(objective))`` of the
  plain objective ``fbp.objective(..., network=net)``, and a second,
  separately jitted copy (the noise floor: the same program twice);
  target ours / this <= 1.05 (issue 18);
- ``clipped_grad``: ``fbp.clipped_grad(..., clip_norm=1.0)`` without noise;
  target clipped_grad / ours <= 1.3 (issue 21);
- ``clipped_grad + noise``: the same with noise multiplier 1 (one normal per
  parameter), against ``noise: NumPy``, as many float32 normals from
  ``numpy.random.Generator.standard_normal`` (the floor on this machine):
  target, the noise's share of the private step (the two medians' difference)
  at most that floor;
- ``vmap(grad) + clip``: ``jax.jit`` of ``jax.vmap(jax.grad)`` of the
  one-sequence objective, each example's global norm, min(1, C/||g_i||), the
  mean (every per-example gradient formed), against ``clipped_grad`` in a
  second, shorter set of blocks;
- ``train step: ours`` and ``train step: jax.value_and_grad``: one jitted
  training step, loss and gradients, then ``make_optimizer("adamw", 1e-3,
  betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0)`` (optax: the global
  norm clipped to 1, AdamW with decay on the leaves with two or more axes,
  nanoGPT's rule) and the update applied;
- ``train step: PyTorch eager`` (with ``--torch-python``): nanoGPT's
  ``model.py`` (from ``--nanogpt``) on the same weights and batch, one step of
  its ``train.py`` (loss, backward, ``clip_grad_norm_(1.0)``, its AdamW) in
  eager mode with 2 threads, in a subprocess (``benchmarks/nanogpt_worker.py``)
  answering one step per request, so that it takes part in the same
  alternating blocks (a request costs a pipe round trip, microseconds).

Before timing, results are compared per leaf (max|a - b| / max|b| of each
leaf, the largest reported): ours against ``jax.value_and_grad``,
``clipped_grad`` against the vmap route, the two training steps' losses and
new params, and PyTorch's loss and gradients against ours. Every JAX
implementation is compiled once (``jax.jit(f).lower(...).compile()``), and
that program is both timed and summarised. Times are medians
over randomised alternating blocks with paired ratios (:mod:`timing`). The
process CPU time of a training step (all threads) is taken in a separate
interleaved loop. The compiled programs are summarised: dots (inside fusions too) with their
shapes and FLOPs, entry instructions, fusions, transposes and copies, XLA's
FLOPs and bytes accessed, and the temporary memory from XLA's memory
analysis. The load average is recorded before and after: the machine may be
shared.

Run (from the repository root)::

    python benchmarks/gpt_bench.py --torch-python /work/bench-venv/bin/python \\
        --nanogpt /work/nanogpt                    # writes its block of RESULTS.md
    python benchmarks/gpt_bench.py --shapes cpu --blocks 3 --out /tmp/r.md
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import report  # noqa: E402
import timing  # noqa: E402
from grad_step import compiled_summary, max_leaf_error  # noqa: E402
from resmlp_bench import vmap_route  # noqa: E402  (the same clipped mean by vmap(grad))
from report import fmt_time, table  # noqa: E402

import functional_bp as fbp  # noqa: E402
from functional_bp import _validate, models  # noqa: E402
from functional_bp.train import make_optimizer  # noqa: E402

SHAPES = {
    "tiny": dict(n_layer=1, n_head=2, n_embd=16, T=8, m=3, V=11),
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, T=64, m=12, V=65),
    "gpu": dict(n_layer=6, n_head=6, n_embd=384, T=256, m=64, V=65),
}
LOSS = "softmax_cross_entropy"
CLIP_NORM = 1.0
LR, BETAS, WEIGHT_DECAY = 1e-3, (0.9, 0.99), 0.1
TARGET_JAX = 1.05
TARGET_CLIP = 1.3
TOL = 2e-5  # float32: of the leaf's scale, per leaf
THREADS = 2
OURS, REF, AGAIN = "ours", "jax.value_and_grad", "jax.value_and_grad, again"
CLIP, VMAP = "clipped_grad", "vmap(grad) + clip"
NOISY, NUMPY = "clipped_grad + noise", "noise: NumPy"
T_OURS, T_REF, T_TORCH = ("train step: ours", "train step: jax.value_and_grad",
                          "train step: PyTorch eager")


# ----------------------------------------------------------------------------- problem
def problem(shape: dict, seed: int = 0):
    """(net, params, x, y): the GPT, its params with the head tied at init, tokens and labels."""
    net = models.gpt(vocab_size=shape["V"], block_size=shape["T"], n_layer=shape["n_layer"],
                     n_head=shape["n_head"], n_embd=shape["n_embd"], dropout=0.0, bias=False)
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    params = list(net.init(kp, (shape["T"],)))
    params[-1] = {"W": params[0]["W"].T}  # nanoGPT's tied head: the same numbers, two arrays
    x = jax.random.randint(kx, (shape["m"], shape["T"]), 0, shape["V"])
    y = jax.random.randint(ky, (shape["m"], shape["T"]), 0, shape["V"])
    return net, params, x, y


def state_dict(params, n_layer: int) -> dict:
    """Our params under nanoGPT's state-dict names (docs/transformers.md's table, inverted)."""
    sd = {"transformer.wte.weight": params[0]["W"], "transformer.wpe.weight": params[1]["W"]}
    for i in range(n_layer):
        h, att, mlp = f"transformer.h.{i}", params[3 + 2 * i], params[4 + 2 * i]
        sd[f"{h}.ln_1.weight"], sd[f"{h}.ln_2.weight"] = att[0]["scale"], mlp[0]["scale"]
        sd[f"{h}.attn.c_attn.weight"] = att[1]["W"].T
        sd[f"{h}.attn.c_proj.weight"] = att[3]["W"].T
        sd[f"{h}.mlp.c_fc.weight"] = mlp[1]["W"].T
        sd[f"{h}.mlp.c_proj.weight"] = mlp[3]["W"].T
    sd["transformer.ln_f.weight"] = params[3 + 2 * n_layer]["scale"]
    sd["lm_head.weight"] = params[4 + 2 * n_layer]["W"].T
    return {k: np.asarray(v, np.float32) for k, v in sd.items()}


def tied_grads(grads, n_layer: int) -> dict:
    """Our gradients as nanoGPT's (tied: the embedding's gradient plus the head's transposed)."""
    sd = state_dict(grads, n_layer)
    sd["transformer.wte.weight"] = sd["transformer.wte.weight"] + sd.pop("lm_head.weight")
    return sd


def train_step(grad_fn, optimizer):
    """jitted (params, opt_state, x, y) -> (new params, new state, loss)."""
    import optax

    @jax.jit
    def step(params, state, x, y):
        J, g = grad_fn(params, x, y)
        updates, state = optimizer.update(g, state, params)
        return optax.apply_updates(params, updates), state, J

    return step


# ----------------------------------------------------------------------------- PyTorch side
class TorchWorker:
    """nanoGPT's step in a subprocess of another Python (benchmarks/nanogpt_worker.py)."""

    def __init__(self, python: str, nanogpt: Path, weights: Path, threads: int):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="nanogpt_worker_", suffix=".log",
                                               delete=False)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen(
            [python, str(HERE / "nanogpt_worker.py"), "--nanogpt", str(nanogpt),
             "--weights", str(weights), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            bufsize=1, env=env)
        ready, _, self.version = self._read().partition(" ")
        self._expect(ready, "ready")

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            tail = Path(self.log.name).read_text()[-3000:]
            raise RuntimeError(f"nanoGPT worker stopped (exit {self.proc.poll()}):\n{tail}")
        return line.strip()

    @staticmethod
    def _expect(got, want):
        if got != want:
            raise RuntimeError(f"nanoGPT worker answered {got!r}, expected {want!r}")

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read()

    def grads(self, path: Path):
        loss = float(self.ask(f"grads {path}"))
        data = np.load(path)
        return loss, {k: data[k] for k in data.files if k != "loss"}

    def step(self, n: int = 1) -> tuple[float, float]:
        wall, cpu = map(float, self.ask(f"step {n}").split())
        return wall, cpu

    def close(self):
        try:
            self.ask("quit")
        except (RuntimeError, BrokenPipeError, OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        os.unlink(self.log.name)


def torch_setup(torch_python, nanogpt, params, x, y, shape, work: Path, log):
    """The worker on our weights and batch, and the agreement of its loss and gradients with ours."""
    missing = [p for p in (Path(torch_python), Path(nanogpt) / "model.py") if not p.is_file()]
    if missing:
        raise SystemExit(f"--torch-python / --nanogpt: {', '.join(map(str, missing))} not found; "
                         "give a Python with torch and a folder holding nanoGPT's model.py")
    weights = work / f"gpt_{shape['name']}.npz"
    config = dict(config_block_size=shape["T"], config_vocab_size=shape["V"],
                  config_n_layer=shape["n_layer"], config_n_head=shape["n_head"],
                  config_n_embd=shape["n_embd"], config_bias=False)
    np.savez(weights, x=np.asarray(x), y=np.asarray(y),
             **{k: np.asarray(v) for k, v in config.items()},
             **state_dict(params, shape["n_layer"]))
    worker = TorchWorker(torch_python, Path(nanogpt), weights, THREADS)
    loss, grads = worker.grads(work / f"gpt_{shape['name']}_grads.npz")
    log(f"[gpt {shape['name']}] PyTorch worker ready, loss {loss:.6f}")
    return worker, loss, grads


# ----------------------------------------------------------------------------- compiled programs
_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]")
_DOT_ARGS = re.compile(r" dot\(%([^,\s]+), %([^)\s]+)\)")
_LHS_C = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_ENTRY_OP = re.compile(r"^\s*(?:ROOT )?%\S+ = \S+ ([\w-]+)\(", re.M)


def _dims(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v)


def dot_inventory(text: str) -> Counter:
    """(lhs, rhs, out, flops of one) -> count, for every dot of an optimised HLO module."""
    shapes, dots = {}, []
    for line in text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        shapes[m[1]] = _dims(m[3])
        if " dot(" in line:
            dots.append((line, _dims(m[3])))
    out = Counter()
    for line, out_shape in dots:
        args, lc = _DOT_ARGS.search(line), _LHS_C.search(line)
        lhs, rhs = shapes.get(args[1], ()), shapes.get(args[2], ())
        k = math.prod(lhs[i] for i in _dims(lc[1])) if lc and lhs else 0
        fmt = lambda s: "[" + ",".join(map(str, s)) + "]"  # noqa: E731
        out[(fmt(lhs), fmt(rhs), fmt(out_shape), 2 * math.prod(out_shape) * k)] += 1
    return out


def summarize(compiled) -> dict:
    """A compiled program: hlo_summary's counts, the dots, entry ops by kind, temp memory."""
    s = compiled_summary(compiled)
    text = compiled.as_text()
    entry = text[text.index("ENTRY"):]
    entry = entry[: entry.index("\n}") if "\n}" in entry else len(entry)]
    s["entry_kinds"] = Counter(_ENTRY_OP.findall(entry))
    s["dot_list"] = dot_inventory(text)
    s["dot_flops"] = float(sum(f * n for (_, _, _, f), n in s["dot_list"].items()))
    try:
        s["temp"] = float(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        s["temp"] = float("nan")
    return s


# ----------------------------------------------------------------------------- one shape
def _ready(v):
    return jax.block_until_ready(v)


def measure(name, shape, *, blocks, reps, warmup, min_sample_s, vmap_blocks, cpu_steps,
            torch_python, nanogpt, work, grads_only=False, check_examples=None, seed=0,
            log=print) -> dict:
    """Agreement, then the timings, of one shape.

    ``grads_only``: time ours, ``jax.value_and_grad`` and ``clipped_grad``
    only (no noise-floor copy, no vmap route, no training steps, no PyTorch).
    ``check_examples``: check ``clipped_grad`` against the vmap route on the
    first that many sequences only (the vmap route on the whole batch forms
    every per-example gradient); None: the whole batch.
    """
    shape = dict(shape, name=name)
    net, params, x, y = problem(shape, seed)
    batch = (x, y)
    kw = dict(network=net, loss=LOSS)
    objective = partial(fbp.objective, **kw)
    vmap = vmap_route(net, CLIP_NORM)
    y_targets = _validate.prepare_model(params, batch, net, LOSS)[4]
    optimizer = make_optimizer("adamw", LR, betas=BETAS, weight_decay=WEIGHT_DECAY,
                               grad_clip=CLIP_NORM)
    opt_state = optimizer.init(params)
    step_ours = train_step(lambda p, x, y: fbp.value_and_grad(p, (x, y), **kw), optimizer)
    step_ref = train_step(lambda p, x, y: jax.value_and_grad(objective)(p, (x, y)), optimizer)
    programs = {  # name -> (function, arguments); each compiled once, timed and summarised
        OURS: (lambda p, b: fbp.value_and_grad(p, b, **kw), (params, batch)),
        REF: (jax.value_and_grad(objective), (params, batch)),
        AGAIN: (jax.value_and_grad(objective), (params, batch)),
        CLIP: (lambda p, b: fbp.clipped_grad(p, b, clip_norm=CLIP_NORM, **kw), (params, batch)),
        NOISY: (lambda p, b, k: fbp.clipped_grad(p, b, clip_norm=CLIP_NORM, noise_multiplier=1.0,
                                                 key=k, **kw), (params, batch, jax.random.key(7))),
        VMAP: (vmap, (params, x, y_targets)),
        T_OURS: (step_ours, (params, opt_state, x, y)),
        T_REF: (step_ref, (params, opt_state, x, y)),
    }
    if grads_only:
        programs = {k: programs[k] for k in (OURS, REF, CLIP, NOISY)}
        vmap_blocks, torch_python = 0, None
    elif vmap_blocks <= 0:
        del programs[VMAP]
    t0 = time.perf_counter()
    compiled = {k: jax.jit(f).lower(*a).compile() for k, (f, a) in programs.items()}
    log(f"[gpt {name}] compiled {len(compiled)} programs in {time.perf_counter() - t0:.0f} s")
    calls = {k: partial(compiled[k], *programs[k][1]) for k in compiled}

    # agreement first: the tables only put side by side steps computing the same numbers
    t0 = time.perf_counter()
    want = _ready(calls[REF]())
    errors = {OURS: max_leaf_error(_ready(calls[OURS]()), want)}
    if check_examples is None and VMAP in calls:
        clip_ref, clip_ours = calls[VMAP](), calls[CLIP]()
    else:
        k = min(check_examples or shape["m"], shape["m"])
        sub = (x[:k], y[:k])
        clip_ours = fbp.clipped_grad(params, sub, clip_norm=CLIP_NORM, **kw)
        clip_ref = vmap(params, x[:k], y_targets[:k])
        _ready(calls[CLIP]())  # the first call of the timed program
    errors[CLIP] = max_leaf_error((jnp.zeros(()), _ready(clip_ours)),
                                  (jnp.zeros(()), _ready(clip_ref)))
    checked = {"clip_examples": check_examples if check_examples is not None else shape["m"]}
    if T_OURS in calls:
        new_o, _, J_o = _ready(calls[T_OURS]())
        new_r, _, J_r = _ready(calls[T_REF]())
        errors[T_OURS] = max_leaf_error((J_o, new_o), (J_r, new_r))
    log(f"[gpt {name}] agreement (and first calls, {time.perf_counter() - t0:.0f} s): {errors}")

    worker, torch_info = None, None
    if torch_python:
        worker, t_loss, t_grads = torch_setup(torch_python, nanogpt, params, x, y, shape, work,
                                              log)
        J, g = want
        ours_sd = tied_grads(g, shape["n_layer"])
        names = sorted(t_grads)
        errors[T_TORCH] = max_leaf_error(
            (jnp.asarray(t_loss), [t_grads[k] for k in names]),
            (J, [ours_sd[k] for k in names]))
        torch_info = {"loss": t_loss, "ours_loss": float(J), "version": worker.version,
                      "leaves": len(names), "missing": sorted(set(ours_sd) - set(t_grads))}
        log(f"[gpt {name}] PyTorch against ours: {errors[T_TORCH]:.2e}")

    cpu = {}
    try:
        steps = {k: (lambda f=f: _ready(f())) for k, f in calls.items()}
        fast = {k: steps[k] for k in (OURS, REF, AGAIN, CLIP, NOISY, T_OURS, T_REF)
                if k in steps}
        n_params = sum(int(np.prod(t.shape)) for t in jax.tree.leaves(params))
        rng = np.random.default_rng(seed)
        fast[NUMPY] = lambda: rng.standard_normal(n_params, dtype=np.float32)  # the floor
        if worker is not None:
            fast[T_TORCH] = lambda: worker.step(1)
        log(f"[gpt {name}] timing {', '.join(fast)} ({blocks} blocks)")
        t_fast = timing.compare(fast, warmup=warmup, blocks=blocks, reps=reps,
                                min_sample_s=min_sample_s, seed=seed)
        for k, v in t_fast.items():
            log(f"  {k:<34} {fmt_time(v.median)}")
        t_vmap = None
        if vmap_blocks > 0:
            log(f"[gpt {name}] timing {CLIP} against {VMAP} ({vmap_blocks} blocks)")
            t_vmap = timing.compare({CLIP: steps[CLIP], VMAP: steps[VMAP]}, warmup=0,
                                    blocks=vmap_blocks, reps=1, min_sample_s=0.0, seed=seed)
        # wall and CPU time of the training steps (all threads of a process), interleaved
        cpu = {k: [0.0, 0.0] for k in (T_OURS, T_REF) if k in steps}
        if worker is not None:
            cpu[T_TORCH] = [0.0, 0.0]
        for _ in range(cpu_steps if cpu else 0):
            for k in cpu:
                if k == T_TORCH:
                    w, c = worker.step(1)
                else:
                    w0, c0 = time.perf_counter(), time.process_time()
                    steps[k]()
                    w, c = time.perf_counter() - w0, time.process_time() - c0
                cpu[k][0] += w / cpu_steps
                cpu[k][1] += c / cpu_steps
    finally:
        if worker is not None:
            worker.close()

    hlo = {k: summarize(c) for k, c in compiled.items() if k != AGAIN}
    return {"shape": shape, "n_params": n_params, "fast": t_fast, "vmap": t_vmap,
            "errors": errors, "hlo": hlo, "cpu": cpu, "torch": torch_info, "checked": checked,
            "args": dict(blocks=blocks, reps=reps, warmup=warmup, min_sample_s=min_sample_s,
                         vmap_blocks=vmap_blocks, cpu_steps=cpu_steps, grads_only=grads_only)}


# ----------------------------------------------------------------------------- the report
def _spread(t):
    lo, hi = t.iqr
    return f"{fmt_time(t.median)} ({fmt_time(lo)}–{fmt_time(hi)})"


def _held(value, target):
    return "yes" if value <= target else "**no**"


def _agrees(err):
    return f"{err:.1e}" + ("" if err <= TOL else " (**above 2e-5**)")


def _kinds(h, kinds=("fusion", "dot", "transpose", "copy")):
    return ", ".join(f"{h['entry_kinds'][k]} {k}" for k in kinds)


def dot_diff(a: Counter, b: Counter, la: str, lb: str, limit: int = 12) -> list[list]:
    """Rows of the dots whose counts differ between two programs, largest FLOPs first."""
    keys = sorted(set(a) | set(b), key=lambda k: -k[3] * max(a[k], b[k]))
    rows = [[f"{k[0]} · {k[1]} → {k[2]}", f"{k[3] / 1e6:.3g}", a[k], b[k]]
            for k in keys if a[k] != b[k]]
    return rows[:limit]


def render_shape(res) -> list[str]:
    s, tf, tv, hlo, err = res["shape"], res["fast"], res["vmap"], res["hlo"], res["errors"]
    r = lambda a, b, t=tf: timing.paired_ratio(t[a], t[b])  # noqa: E731
    ratio_jax, clip = r(OURS, REF), r(CLIP, OURS)
    floor = r(AGAIN, REF) if AGAIN in tf else None
    has_torch = T_TORCH in tf
    a = res["args"]
    plan = (f"`clipped_grad` against the vmap route: {a['vmap_blocks']} blocks of one call; "
            f"CPU time: {a['cpu_steps']} interleaved steps of each"
            if not a["grads_only"] else
            "only ours, `jax.value_and_grad` and `clipped_grad` timed at this shape (one step "
            "takes seconds to a minute on the loaded machine)")
    checked = res["checked"]["clip_examples"]
    out = [
        f"### Shape `{s['name']}`: {s['n_layer']} layers, {s['n_head']} heads, {s['n_embd']} "
        f"wide, T {s['T']}, batch {s['m']}, vocabulary {s['V']}\n",
        f"{res['n_params']:,} parameters (ours: head and embedding separate; nanoGPT's tied "
        f"model has {res['n_params'] - s['V'] * s['n_embd']:,}). Timing: {a['blocks']} blocks × "
        f"{a['reps']} samples (samples of at least {a['min_sample_s']:g} s, {a['warmup']} "
        f"warm-up calls besides the agreement check's); {plan}. `clipped_grad` checked "
        f"against the vmap route on {checked} of the {s['m']} sequences.\n",
        table(["target", "measured", "held"], [
            [f"ours / `jax.value_and_grad` ≤ {TARGET_JAX}", f"{ratio_jax:.3f}",
             _held(ratio_jax, TARGET_JAX)],
            [f"`clipped_grad` (no noise) / ours ≤ {TARGET_CLIP}", f"{clip:.3f}",
             _held(clip, TARGET_CLIP)],
        ] + ([["the noise in the private step (`clipped_grad + noise` − `clipped_grad`, medians) "
               f"≤ as many normals from NumPy ({fmt_time(tf[NUMPY].median)})",
               fmt_time(tf[NOISY].median - tf[CLIP].median),
               _held(tf[NOISY].median - tf[CLIP].median, tf[NUMPY].median)]]
             if NOISY in tf else [])
        + ([[f"train step: ours / PyTorch eager ({THREADS} threads) < 1",
               f"{r(T_OURS, T_TORCH):.3f}", _held(r(T_OURS, T_TORCH), 0.999999)]]
             if has_torch else [])),
        "",
        "Median per call (interquartile range of the samples); × ours and × train step are "
        "medians over blocks of the paired block ratios. Error: largest per-leaf "
        "max|a−b|/max|b| (the loss included) against the row's reference.\n",
    ]
    rows = []
    for k in (OURS, REF, AGAIN, CLIP, NOISY, NUMPY):
        if k not in tf:
            continue
        rows.append([k, _spread(tf[k]), f"{r(k, OURS):.3f}", "—",
                     report.fmt_bytes(hlo[k]["temp"]) if k in hlo else "—",
                     {OURS: _agrees(err[OURS]) + " vs jax.value_and_grad",
                      CLIP: _agrees(err[CLIP]) + " vs vmap(grad) + clip"}.get(k, "—")])
    for k in (T_OURS, T_REF, T_TORCH):
        if k not in tf:
            continue
        rows.append([k, _spread(tf[k]), f"{r(k, OURS):.3f}", f"{r(k, T_OURS):.3f}",
                     report.fmt_bytes(hlo[k]["temp"]) if k in hlo else "not measured",
                     f"{err[T_OURS]:.1e} vs the jax step (loss, new params)" if k == T_OURS
                     else _agrees(err[T_TORCH]) + " vs ours (loss, gradients)" if k == T_TORCH
                     else "—"])
    out.append(table(["implementation", "median (IQR)", "× ours", "× train step: ours",
                      "temporary memory", "error"], rows))
    if floor is not None:
        out.append(f"\nNoise floor (the reference's second copy over the first, same blocks): "
                   f"{floor:.3f}.")
    if T_REF in tf:
        out.append(f" Train step ours / jax.value_and_grad: {r(T_OURS, T_REF):.3f}. The two "
                   "steps' new params differ more than their gradients do: AdamW's first step "
                   "moves each entry by about lr·g/(|g| + eps), so an entry of the gradient "
                   "near 0 whose last bits differ can move by up to 2·lr either way.")
    if res["torch"]:
        ti = res["torch"]
        out.append(f" PyTorch's loss {ti['loss']:.6f}, ours {ti['ours_loss']:.6f}; "
                   f"{ti['leaves']} gradient leaves compared (ours mapped onto nanoGPT's names, "
                   "the embedding's gradient plus the head's).")
    out.append("\n")
    if tv is not None:
        out += [table(["implementation", "median (IQR)", "temporary memory"], [
            [CLIP, _spread(tv[CLIP]), report.fmt_bytes(hlo[CLIP]["temp"])],
            [VMAP, _spread(tv[VMAP]), report.fmt_bytes(hlo[VMAP]["temp"])]]),
            f"\n`jax.vmap(jax.grad)` + clip, which forms every example's gradient, takes "
            f"**{timing.paired_ratio(tv[VMAP], tv[CLIP]):.2f}×** the time of `clipped_grad` "
            "(paired ratio).\n"]
    cpu = res["cpu"]
    if cpu:
        out += ["Training step, wall and process CPU time (all threads) per step, mean of the "
                "interleaved steps:\n",
                table(["implementation", "wall", "CPU", "CPU / wall"],
                      [[k, fmt_time(w), fmt_time(c), f"{c / w:.2f}"]
                       for k, (w, c) in cpu.items()]), ""]
    out += ["Compiled programs (`jax.jit(f).lower(...).compile()`): dot instructions "
            "(inside fusions too) and their FLOPs counted from the shapes, entry instructions "
            "(a fusion counts one) and some of their kinds, XLA's FLOPs and bytes accessed, "
            "temporary memory (XLA's memory analysis).\n",
            table(["program", "dots", "dot MFLOP", "entry ops", "of which", "MFLOP (XLA)",
                   "bytes accessed", "temp memory"],
                  [[k, h["dots"], f"{h['dot_flops'] / 1e6:.5g}", sum(h["entry_kinds"].values()),
                    _kinds(h), f"{h['flops'] / 1e6:.5g}", report.fmt_bytes(h["bytes"]),
                    report.fmt_bytes(h["temp"])] for k, h in hlo.items()]), ""]
    top = sorted(hlo[OURS]["dot_list"].items(), key=lambda kv: -kv[0][3] * kv[1])[:8]
    total = hlo[OURS]["dot_flops"]
    out += ["The largest dots of ours (lhs · rhs → out; MFLOP of one; count; share of the "
            "program's dot FLOPs):\n",
            table(["dot", "MFLOP", "count", "share"],
                  [[f"{k[0]} · {k[1]} → {k[2]}", f"{k[3] / 1e6:.3g}", n,
                    f"{k[3] * n / total:.1%}"] for k, n in top]), ""]
    diff = dot_diff(hlo[OURS]["dot_list"], hlo[REF]["dot_list"], OURS, REF)
    if diff:
        out += ["Dots whose count differs between ours and `jax.value_and_grad` (lhs · rhs → "
                "out, MFLOP of one, count in each; the largest first):\n",
                table(["dot", "MFLOP", OURS, REF], diff), ""]
    out += notes(res, ratio_jax, floor, clip, has_torch)
    return out


def notes(res, ratio_jax, floor, clip, has_torch) -> list[str]:
    tf, hlo, cpu = res["fast"], res["hlo"], res["cpu"]
    r = lambda a, b: timing.paired_ratio(tf[a], tf[b])  # noqa: E731
    ho, hr, hc = hlo[OURS], hlo[REF], hlo[CLIP]
    out = []

    def compare(a, b, la, lb):
        return (f"{a['dots']} vs {b['dots']} dots ({a['dot_flops'] / 1e6:.4g} vs "
                f"{b['dot_flops'] / 1e6:.4g} dot MFLOP), {sum(a['entry_kinds'].values())} vs "
                f"{sum(b['entry_kinds'].values())} entry ops ({_kinds(a)} against {_kinds(b)}), "
                f"{report.fmt_bytes(a['bytes'])} vs {report.fmt_bytes(b['bytes'])} accessed, "
                f"{report.fmt_bytes(a['temp'])} vs {report.fmt_bytes(b['temp'])} temporary "
                f"memory ({la} against {lb})")

    if ratio_jax > TARGET_JAX:
        a_lo, a_hi = tf[OURS].iqr
        b_lo, b_hi = tf[REF].iqr
        fl = f"noise floor {floor:.3f}; " if floor is not None else ""
        out.append(f"ours / jax = {ratio_jax:.3f} > {TARGET_JAX} ({fl}"
                   f"interquartile ranges ours {fmt_time(a_lo)}–{fmt_time(a_hi)}, jax "
                   f"{fmt_time(b_lo)}–{fmt_time(b_hi)}). The compiled programs: "
                   + compare(ho, hr, OURS, REF) + ".")
    if clip > TARGET_CLIP:
        extra = dot_diff(hc["dot_list"], ho["dot_list"], CLIP, OURS, limit=6)
        listed = "; ".join(f"{d} ({m} MFLOP) {a}× against {b}×" for d, m, a, b in extra)
        out.append(f"clipped_grad / ours = {clip:.3f} > {TARGET_CLIP}. The compiled programs: "
                   + compare(hc, ho, CLIP, OURS) + (f". The dots it adds: {listed}." if listed
                                                    else "."))
    if has_torch and r(T_OURS, T_TORCH) > 1:
        w_o, c_o = cpu[T_OURS]
        w_t, c_t = cpu[T_TORCH]
        ht = hlo[T_OURS]
        out.append(
            f"train step ours / PyTorch eager = {r(T_OURS, T_TORCH):.3f}. Per step, CPU time "
            f"{fmt_time(c_o)} (ours) against {fmt_time(c_t)} (PyTorch), wall {fmt_time(w_o)} "
            f"against {fmt_time(w_t)} in the interleaved loop. Our step's program: "
            f"{ht['dots']} dots, {ht['dot_flops'] / 1e6:.4g} dot MFLOP "
            f"({ht['dot_flops'] / max(w_o, 1e-12) / 1e9:.3g} GFLOP/s of wall time), "
            f"{sum(ht['entry_kinds'].values())} entry ops ({_kinds(ht)}) run one after "
            f"the other, {report.fmt_bytes(ht['bytes'])} accessed, "
            f"{report.fmt_bytes(ht['temp'])} temporary memory.")
    if cpu and min(c / w for w, c in cpu.values()) < 0.8:
        out.append(
            "CPU / wall below 1 for steps whose threads could fill both cores: the processes "
            "waited for the CPUs (a load above the core count). Wall times and their ratios "
            "then depend on how the scheduler served each process, and a step made of many "
            "small multi-threaded operations (PyTorch eager: each operation a parallel region "
            "that ends when both of its threads have been scheduled) suffers most; the CPU "
            "time per step is the steadier comparison: "
            + ", ".join(f"{k.removeprefix('train step: ')} {fmt_time(c)}"
                        for k, (w, c) in cpu.items()) + ".")
    if out:
        return ["#### Notes\n"] + [f"- {n}" for n in out] + [""]
    return []


def render(results, *, command, machine, versions, date, elapsed, load_start, load_end) -> str:
    out = [
        f"Written by `benchmarks/gpt_bench.py` on {date}, {elapsed / 60:.1f} min. Command:\n",
        f"```\n{command}\n```\n",
        f"Load average (1, 5, 15 min) at start {load_start}, at end {load_end}, on "
        f"{os.cpu_count()} CPUs: the machine was shared when this ran, and the times are "
        "those of a loaded machine; the ratios are paired by block.\n",
        "Float32, `models.gpt(..., dropout=0.0, bias=False)`, integer tokens and labels "
        f"(m, T), softmax cross-entropy, clip norm {CLIP_NORM:g}; the training step is AdamW "
        f"(optax via `make_optimizer`: lr {LR:g}, betas {BETAS}, weight decay {WEIGHT_DECAY:g} "
        f"on the leaves with two or more axes) after clipping the global norm to "
        f"{CLIP_NORM:g}; PyTorch is nanoGPT's `model.py` in eager mode, {THREADS} threads, "
        "in its own process, on the same weights and batch.\n",
    ]
    for res in results.values():
        out += render_shape(res)
    torch_versions = {res["torch"]["version"] for res in results.values() if res["torch"]}
    versions = [(k, ", ".join(sorted(torch_versions)) + " (the benchmark's own environment)"
                 if k == "torch" and torch_versions else v) for k, v in versions]
    out += [report.kv_table(machine + versions)]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["cpu", "gpu"], choices=list(SHAPES))
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--gpu-blocks", type=int, default=3,
                    help="blocks at the gpu shape (one of its steps takes seconds)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--min-sample-s", type=float, default=0.2)
    ap.add_argument("--vmap-blocks", type=int, default=3)
    ap.add_argument("--cpu-steps", type=int, default=10)
    ap.add_argument("--gpu-grads-only", action="store_true",
                    help="at the gpu shape, time ours, jax.value_and_grad and clipped_grad only")
    ap.add_argument("--gpu-check-examples", type=int, default=4,
                    help="at the gpu shape, check clipped_grad against the vmap route on this "
                         "many sequences (the vmap route on all 64 forms 64 gradients)")
    ap.add_argument("--torch-python", default=None,
                    help="a Python with torch: time nanoGPT's PyTorch step beside ours")
    ap.add_argument("--nanogpt", default="/work/nanogpt",
                    help="a folder holding nanoGPT's model.py (with --torch-python)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default=None)
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    a = ap.parse_args(argv)
    args = list(sys.argv[1:] if argv is None else argv)
    if "--out" in args:
        i = args.index("--out")
        del args[i:i + 2]
    command = "python " + shlex.join(["benchmarks/gpt_bench.py"] + args)
    label = a.label or f"GPT benchmark: {report.default_label()}"
    machine = report.machine()
    load_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load average at start: {load_start}")
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpt_bench_") as work:
        for name in a.shapes:
            big = name == "gpu"
            results[name] = measure(
                name, SHAPES[name], blocks=a.gpu_blocks if big else a.blocks,
                reps=1 if big else a.reps, warmup=0 if big else a.warmup,
                min_sample_s=0.0 if big else a.min_sample_s,
                vmap_blocks=min(a.vmap_blocks, 1) if big else a.vmap_blocks,
                cpu_steps=max(1, a.cpu_steps // 5) if big else a.cpu_steps,
                torch_python=a.torch_python, nanogpt=a.nanogpt, work=Path(work),
                grads_only=big and a.gpu_grads_only,
                check_examples=a.gpu_check_examples if big else None, seed=a.seed)
    elapsed = time.perf_counter() - started
    load_end = " ".join(f"{v:.2f}" for v in os.getloadavg())
    machine.append(("load average at end", load_end))
    body = f"## {label}\n\n" + render(results, command=command, machine=machine,
                                       versions=report.versions(), date=report.now(),
                                       elapsed=elapsed, load_start=load_start,
                                       load_end=load_end)
    report.write_block(Path(a.out), label, body)
    print(body)
    print(f"load average at end: {load_end}; wrote the block {label!r} of {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
