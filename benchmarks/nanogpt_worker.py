"""nanoGPT's training step in PyTorch eager mode, driven line by line from stdin.

Run by ``benchmarks/gpt_bench.py`` with the Python of a separate environment
that has PyTorch (never a dependency of this library)::

    PYTHON nanogpt_worker.py --nanogpt DIR --weights W.npz --threads 2

``DIR`` holds nanoGPT's ``model.py`` (imported as it is); ``W.npz`` holds the
config (``config_*`` entries), the token batch ``x`` and labels ``y`` (B, T)
and the weights under nanoGPT's state-dict names (``lm_head.weight`` is
nanoGPT's tied ``transformer.wte.weight``). The model is
``GPT(GPTConfig(..., dropout=0.0, bias=...))`` with those weights, the
optimizer nanoGPT's own ``configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")``
(AdamW, weight decay on the tensors with two or more axes). One step is
nanoGPT's ``train.py`` on a CPU with ``compile=False``, gradient accumulation
1 and no scaler::

    logits, loss = model(x, y); loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step(); optimizer.zero_grad(set_to_none=True)

Commands, one per line; each answer is one line on stdout (nanoGPT's own
prints go to stderr; the first line is ``ready`` and PyTorch's version):

- ``grads PATH``: the loss and the gradients of the weights (before any
  clipping or step) into ``PATH`` (.npz, state-dict names); answers the loss;
- ``step N``: N training steps; answers the wall and the process CPU seconds
  they took;
- ``quit``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    answer, sys.stdout = sys.stdout, sys.stderr  # nanoGPT prints; answers stay on their own line
    import torch

    sys.path.insert(0, a.nanogpt)
    from model import GPT, GPTConfig

    torch.set_num_threads(a.threads)
    data = np.load(a.weights)
    cfg = {k.removeprefix("config_"): data[k].item() for k in data.files if k.startswith("config_")}
    cfg["bias"] = bool(cfg["bias"])
    model = GPT(GPTConfig(**cfg, dropout=0.0))
    state = {k: torch.from_numpy(np.ascontiguousarray(data[k])) for k in data.files
             if k not in ("x", "y") and not k.startswith("config_")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(".attn.bias")]  # the mask buffer, if any
    if missing or unexpected:
        raise SystemExit(f"weights do not fit nanoGPT's model: missing {missing}, "
                         f"unexpected {unexpected}")
    model.train()
    x = torch.from_numpy(data["x"].astype(np.int64))
    y = torch.from_numpy(data["y"].astype(np.int64))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")

    def step():
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    print(f"ready {torch.__version__}", file=answer, flush=True)
    for line in sys.stdin:
        cmd, *rest = line.split()
        if cmd == "grads":
            optimizer.zero_grad(set_to_none=True)
            _, loss = model(x, y)
            loss.backward()
            grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
            optimizer.zero_grad(set_to_none=True)
            np.savez(rest[0], loss=np.float32(loss.item()), **grads)
            print(f"{loss.item():.9g}", file=answer, flush=True)
        elif cmd == "step":
            n = int(rest[0])
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                step()
            print(f"{time.perf_counter() - w0:.9g} {time.process_time() - c0:.9g}",
                  file=answer, flush=True)
        elif cmd == "quit":
            break
        else:
            raise SystemExit(f"unknown command {line!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
