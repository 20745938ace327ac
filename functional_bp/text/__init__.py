"""Language-model data and sampling: character corpora, minGPT's sort task, nanoGPT's batches,
learning-rate schedule and generation.

- :mod:`.corpus`: ``load_text(path)`` -> :class:`CharCorpus` (nanoGPT's
  ``shakespeare_char/prepare.py`` rules), :func:`encode`, :func:`decode`.
- :mod:`.sort`: minGPT's sorting task, :func:`sort_problems`, :func:`sort_accuracy`.
- :mod:`.batches`: :func:`random_windows` (nanoGPT's ``get_batch``),
  :func:`estimate_loss`, and :func:`text_blocks` (the non-overlapping blocks
  of a private run).
- :mod:`.schedule`: :func:`nanogpt_lr_schedule` (nanoGPT's ``get_lr``).
- :mod:`.generate`: :func:`generate` and :func:`generate_stream` (nanoGPT's
  ``model.generate``, with a fixed-shape window).

The corpus and sort modules need only numpy; ``functional_bp.datasets`` loads
both by name (``load_dataset("text:PATH")``, ``load_dataset("sort")``).
"""

from .batches import estimate_loss, random_windows, text_blocks
from .corpus import CharCorpus, decode, encode, load_text, storage_dtype
from .generate import generate, generate_stream, window_length
from .schedule import nanogpt_lr_schedule
from .sort import (SORT_DIGITS, SORT_LENGTH, is_test_problem, sort_accuracy, sort_problems,
                   sort_sequences)

__all__ = [
    "CharCorpus",
    "SORT_DIGITS",
    "SORT_LENGTH",
    "decode",
    "encode",
    "estimate_loss",
    "generate",
    "generate_stream",
    "is_test_problem",
    "load_text",
    "nanogpt_lr_schedule",
    "random_windows",
    "sort_accuracy",
    "sort_problems",
    "sort_sequences",
    "storage_dtype",
    "text_blocks",
    "window_length",
]
