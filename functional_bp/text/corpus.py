"""A text file as a character-level corpus, exactly as nanoGPT's ``shakespeare_char/prepare.py``.

The rules (nanoGPT's, kept exactly):

- the file is read as UTF-8 text with universal newlines (what Python's
  ``open(path, 'r')`` does on Linux: ``\\r\\n`` and a lone ``\\r`` become ``\\n``);
- the vocabulary is the sorted set of its characters, ``sorted(set(text))``
  (sorted by code point), and token v is the v-th character of it;
- with n characters, the first ``int(n * (1 - val_fraction))`` characters are the
  training split and the rest the validation split (val_fraction 0.1: nanoGPT's
  ``int(n*0.9)``);
- tokens are stored compactly: uint16 where the vocabulary has at most 65,536
  characters (nanoGPT's ``train.bin``), else uint32.

The vocabulary string is all a checkpoint needs to encode prompts and decode
samples (:func:`encode`, :func:`decode`); the text itself is not needed again.

A 100 MB text is read in one piece (100 MB of bytes, then Python's string), and
converted in chunks of :data:`CHUNK` characters, so the only per-character
arrays are the tokens themselves (2 bytes a character). Measured on this
machine: tiny Shakespeare repeated 90 times (100,385,460 characters) loaded in
7.8 s, the process's peak resident memory 324 MB above that of the import
alone (``/usr/bin/time -v``; load average 16 on 2 cores).

Example::

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.txt")
    >>> _ = open(path, "w", encoding="utf-8").write("hello world, hello text\\n")
    >>> corpus = load_text(path)
    >>> corpus.vocab, corpus.vocab_size, corpus.train.dtype
    ('\\n ,dehlortwx', 12, dtype('uint16'))
    >>> len(corpus.train), len(corpus.val)            # int(24 * 0.9) = 21
    (21, 3)
    >>> corpus.decode(corpus.train[:5]), corpus.encode("hello").tolist()
    ('hello', [5, 4, 6, 6, 7])
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

DEFAULT_VAL_FRACTION = 0.1
"""nanoGPT's split: the first 90% of the characters train, the last 10% validate."""
TOKEN_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}
"""The storage a corpus may be asked for (``token_dtype=``), by name."""
CHUNK = 1 << 22
"""Characters converted at a time (bounds the temporary arrays)."""
_MAX_CODE_POINT = 0x10FFFF


def _capacity(dtype) -> int:
    return int(np.iinfo(dtype).max) + 1


def storage_dtype(vocab_size: int, token_dtype=None, *, where="text"):
    """The numpy dtype that stores tokens 0 .. vocab_size - 1.

    ``token_dtype`` None chooses uint16 where it holds the vocabulary (at most
    65,536 tokens), else uint32; a named dtype (see :data:`TOKEN_DTYPES`) is
    checked to hold it.

    Example::

        >>> storage_dtype(65), storage_dtype(70_000)
        (<class 'numpy.uint16'>, <class 'numpy.uint32'>)
        >>> storage_dtype(300, "uint8")
        Traceback (most recent call last):
        ...
        ValueError: text: a vocabulary of 300 characters does not fit in uint8 (at most 256 tokens); use token_dtype='uint16' or 'uint32', or None to choose
    """
    if token_dtype is None:
        return np.uint16 if vocab_size <= _capacity(np.uint16) else np.uint32
    if token_dtype not in TOKEN_DTYPES:
        raise ValueError(f"token_dtype must be one of {list(TOKEN_DTYPES)} or None; "
                         f"got {token_dtype!r}")
    dtype = TOKEN_DTYPES[token_dtype]
    if vocab_size > _capacity(dtype):
        larger = [n for n, d in TOKEN_DTYPES.items() if _capacity(d) >= vocab_size]
        raise ValueError(
            f"{where}: a vocabulary of {vocab_size} characters does not fit in {token_dtype} "
            f"(at most {_capacity(dtype)} tokens); use token_dtype="
            + " or ".join(repr(n) for n in larger) + ", or None to choose")
    return dtype


def _code_points(text: str) -> np.ndarray:
    """The characters of ``text`` as uint32 code points."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def encode(text: str, vocab: str, *, dtype=np.int32) -> np.ndarray:
    """The tokens of ``text`` (shape (len(text),)): each character's index in ``vocab``.

    Raises a ValueError naming every character of ``text`` that is not in the
    vocabulary (and where the first one is), never a silent substitute.

    Example::

        >>> encode("abba", "ab").tolist()
        [0, 1, 1, 0]
        >>> encode("abc!", "ab")
        Traceback (most recent call last):
        ...
        ValueError: 2 character(s) not in the vocabulary of 2 characters: 'c', '!' (first at position 2); the vocabulary is 'ab'
    """
    if not isinstance(text, str):
        raise TypeError(f"encode takes a str; got {type(text).__name__}")
    points = _code_points(vocab)
    order = np.argsort(points, kind="stable")
    table = points[order]
    if len(table) > 1 and not np.all(table[1:] > table[:-1]):
        twice = table[1:][table[1:] == table[:-1]]
        raise ValueError(f"the vocabulary holds the character {chr(int(twice[0]))!r} more "
                         "than once; each character must occur once")
    codes = _code_points(text)
    pos = np.minimum(np.searchsorted(table, codes), max(len(table) - 1, 0))
    known = table[pos] == codes if len(table) else np.zeros(len(codes), bool)
    if not known.all():
        bad = np.flatnonzero(~known)
        chars = list(dict.fromkeys(map(chr, codes[bad].tolist())))
        shown = ", ".join(repr(c) for c in chars[:20]) + (", ..." if len(chars) > 20 else "")
        raise ValueError(
            f"{len(chars)} character(s) not in the vocabulary of {len(vocab)} characters: "
            f"{shown} (first at position {int(bad[0])}); the vocabulary is "
            + (repr(vocab) if len(vocab) <= 200 else repr(vocab[:200]) + "..."))
    return order[pos].astype(dtype)


def decode(tokens, vocab: str) -> str:
    """The text of ``tokens`` (any integer array or sequence): ``''.join(vocab[t] ...)``.

    Example::

        >>> decode([0, 1, 1, 0], "ab")
        'abba'
    """
    t = np.asarray(tokens)
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"decode takes integer tokens; got dtype {t.dtype}")
    t = t.reshape(-1).astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= len(vocab)):
        bad = t[(t < 0) | (t >= len(vocab))]
        raise ValueError(f"token {int(bad[0])} is outside the vocabulary of {len(vocab)} "
                         f"characters (tokens 0..{len(vocab) - 1})")
    return "".join(np.array(list(vocab), dtype=object)[t]) if t.size else ""


@dataclasses.dataclass(frozen=True, eq=False)
class CharCorpus:
    """A character-level text corpus: the two token splits and the vocabulary.

    Attributes:
      name: where it came from (``"text:PATH"``).
      vocab: the vocabulary, the sorted characters as one string; token v is
        ``vocab[v]``. Save it with every checkpoint: it is all that
        :func:`encode` and :func:`decode` need.
      train: (n_train,) tokens, uint16 (or the chosen storage), the first part.
      val: (n_val,) tokens, the last part.
    """

    name: str
    vocab: str
    train: np.ndarray
    val: np.ndarray

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """int32 tokens of ``text`` (see :func:`encode`)."""
        return encode(text, self.vocab)

    def decode(self, tokens) -> str:
        """The text of ``tokens`` (see :func:`decode`)."""
        return decode(tokens, self.vocab)

    def check_block(self, block_size: int) -> None:
        """Refuse a block size that a split cannot hold a window of (block_size + 1 tokens).

        A training window is block_size inputs and their block_size next
        characters, block_size + 1 tokens in all, drawn from one split (as
        nanoGPT's ``get_batch``); both splits need at least that many. Call it
        before training.

        Example::

            >>> c = CharCorpus("text:t", "ab", np.zeros(9, np.uint16), np.zeros(2, np.uint16))
            >>> c.check_block(1)
            >>> c.check_block(2)
            Traceback (most recent call last):
            ...
            ValueError: text:t: the validation split has 2 characters, fewer than block_size + 1 = 3 (one window of inputs and next characters); use a longer text, a block_size of at most 1, or a larger validation fraction
        """
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
                or block_size < 1:
            raise ValueError(f"block_size must be a positive integer; got {block_size!r}")
        for part, tokens in (("training", self.train), ("validation", self.val)):
            if len(tokens) < block_size + 1:
                fix = ("a smaller validation fraction" if part == "training"
                       else "a larger validation fraction")
                raise ValueError(
                    f"{self.name}: the {part} split has {len(tokens)} characters, fewer "
                    f"than block_size + 1 = {block_size + 1} (one window of inputs and next "
                    f"characters); use a longer text, a block_size of at most "
                    f"{max(len(tokens) - 1, 0)}, or {fix}")


def _read_text(path: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"text file not found: {path}" + (
            f" (from the folder {os.getcwd()})" if not os.path.isabs(path) else ""))
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not a file; give the path of a UTF-8 text file")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise ValueError(f"{path}: the file is empty; give a UTF-8 text file with some text")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ValueError(f"{path}: the file is UTF-16 text (it starts with a UTF-16 "
                         "byte-order mark); save it as UTF-8")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ValueError(f"{path}: a binary file, not text (a NUL byte at offset {nul}); "
                         "give a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it "
                         "as UTF-8") from None
    del raw
    # Universal newlines, as open(path, 'r') reads it in nanoGPT's prepare.py.
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def load_text(path, *, val_fraction=None, token_dtype=None) -> CharCorpus:
    """Read a UTF-8 text file into a :class:`CharCorpus` (nanoGPT's character-level rules).

    Args:
      path: a UTF-8 text file.
      val_fraction: the share of the characters, taken from the end, that form
        the validation split [0.1]; the split point is ``int(n * (1 - val_fraction))``.
      token_dtype: ``"uint8"``, ``"uint16"``, ``"uint32"``, or None to choose
        (uint16 where the vocabulary fits, else uint32).

    Raises:
      FileNotFoundError: no such file.
      ValueError: an empty, binary (NUL bytes), UTF-16 or non-UTF-8 file, a
        split that would be empty, or a vocabulary too large for ``token_dtype``;
        each message names the file and the fix. A text too short for a block
        size is caught by :meth:`CharCorpus.check_block`.
    """
    path = os.fspath(path)
    if val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction!r}")
    text = _read_text(path)
    n = len(text)
    cut = int(n * (1.0 - val_fraction))   # nanoGPT: int(n*0.9)
    if not 0 < cut < n:
        raise ValueError(
            f"{path}: {n} character(s) cannot be split into training and validation text "
            f"with val_fraction={val_fraction} (the {'training' if cut <= 0 else 'validation'} "
            "split would be empty); use a longer text")
    # The vocabulary: which code points occur (a bincount, not a sort of the whole text).
    seen = np.zeros(_MAX_CODE_POINT + 1, dtype=bool)
    for start in range(0, n, CHUNK):
        seen[_code_points(text[start:start + CHUNK])] = True
    codes = np.flatnonzero(seen)
    vocab = "".join(map(chr, codes.tolist()))
    dtype = storage_dtype(len(vocab), token_dtype, where=path)
    lookup = np.zeros(_MAX_CODE_POINT + 1, dtype=dtype)
    lookup[codes] = np.arange(len(codes), dtype=dtype)
    tokens = np.empty(n, dtype=dtype)
    for start in range(0, n, CHUNK):
        tokens[start:start + CHUNK] = lookup[_code_points(text[start:start + CHUNK])]
    return CharCorpus(f"text:{path}", vocab, tokens[:cut], tokens[cut:])  # views, no copy
