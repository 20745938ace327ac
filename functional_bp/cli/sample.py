"""``functional-bp sample``: text from a language-model run's checkpoint, printed as it comes.

The checkpoint (``params.npz`` or ``best.npz`` of a ``functional-bp train
--data text:PATH`` run) holds the network and the vocabulary; the prompt is
encoded with it (a character outside it is refused, named), the tokens come
from :func:`functional_bp.text.generate_stream` (one compiled step, the same
tokens for the same --seed) and are decoded with the same vocabulary.
"""

from __future__ import annotations

import os
import sys

from ._args import UsageError, non_negative_float, non_negative_int, positive_int


def add(sub):
    """Add ``sample`` and its options."""
    p = sub.add_parser(
        "sample", help="generate text from a trained character language model",
        description="Generate text from the checkpoint of a 'functional-bp train --data "
        "text:PATH' run, decoded with the vocabulary saved in it, printed as it is "
        "generated. Each option's default is in brackets.")
    p.add_argument("--from", dest="source", required=True, metavar="DIR",
                   help="the run's folder (its best.npz, else params.npz) or a checkpoint file")
    p.add_argument("--prompt", default="\n", metavar="TEXT",
                   help="the text to continue; every character must be in the vocabulary "
                   "[a newline]")
    p.add_argument("--tokens", type=non_negative_int, default=500, metavar="N",
                   help="characters to generate [500]")
    p.add_argument("--temperature", type=non_negative_float, default=1.0, metavar="T",
                   help="divide the logits by T (0: greedy) [1.0]")
    p.add_argument("--top-k", type=positive_int, metavar="K",
                   help="sample among the K most likely characters only [none: all]")
    p.add_argument("--seed", type=non_negative_int, default=0, help="the draws' seed [0]")
    return p


def checkpoint_path(source):
    """The checkpoint of ``source``: a file, or a run folder's best.npz, else its params.npz."""
    if os.path.isdir(source):
        for name in ("best.npz", "params.npz"):
            path = os.path.join(source, name)
            if os.path.isfile(path):
                return path
        raise UsageError("--from", f"{source} holds neither best.npz nor params.npz; give the "
                         "--out folder of a 'functional-bp train --data text:PATH' run")
    if not os.path.isfile(source):
        raise UsageError("--from", f"{source}: no such folder or file")
    return source


def run(args, parser=None):
    """Run ``functional-bp sample``; the exit status."""
    import jax

    from ..checkpoint import CheckpointError, load_checkpoint
    from ..layers import from_config
    from ..text import encode, generate_stream

    path = checkpoint_path(args.source)
    try:
        ckpt = load_checkpoint(path)
    except (OSError, ValueError, CheckpointError) as e:
        raise UsageError("--from", str(e)) from None
    vocab = ckpt.metadata.get("vocab")
    if not isinstance(vocab, str) or "network" not in ckpt.metadata:
        raise UsageError("--from", f"{path} holds no vocabulary: it is not the checkpoint of "
                         "a 'functional-bp train --data text:PATH' run")
    try:
        prompt = encode(args.prompt, vocab)
    except ValueError as e:
        raise UsageError("--prompt", str(e)) from None
    if not len(prompt):
        raise UsageError("--prompt", "empty; give at least one character")
    net = from_config(ckpt.metadata["network"])
    stream = generate_stream(ckpt.params, prompt, network=net, steps=args.tokens,
                             key=jax.random.key(args.seed), temperature=args.temperature,
                             top_k=args.top_k)
    out = sys.stdout
    out.write(args.prompt)
    for token in stream:
        out.write(vocab[int(token)])
        out.flush()
    out.write("\n")
    return 0
