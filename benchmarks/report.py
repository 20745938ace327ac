"""RESULTS.md: the machine, the library versions, the command and the tables.

The file holds one block per run label::

    <!-- run:LABEL begin -->
    ... everything one run of benchmarks/run.py measured ...
    <!-- run:LABEL end -->

A run replaces the block of its own label and keeps the others, so a CPU run
and a GPU run made on different machines sit side by side in one file, each
regenerated only by the script.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import re
import subprocess
from pathlib import Path

HEADER = """# Benchmark results

Written by `benchmarks/run.py`; never edited by hand. Each section below is one
run, labelled by its machine; rerunning the command shown in a section replaces
that section and keeps the others. How the numbers are taken (warm-up,
randomised alternating blocks, medians, paired ratios) is described in
`benchmarks/timing.py` and on the documentation site's benchmarks page (`docs/benchmarks.md`).
"""


def fmt_time(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "n/a"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} GiB"


def table(headers, rows) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])
        return f"{kb / 2**20:.0f} GiB"
    except (OSError, TypeError):
        return "unknown"


def _git(*args) -> str:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> list[tuple[str, str]]:
    import jax

    devices = jax.devices()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        ("CPU", f"{_cpu_model()}, {cores} cores usable by this process"),
        ("memory", _memory()),
        ("OS", platform.platform()),
        ("JAX backend", f"{jax.default_backend()}: {len(devices)} x {devices[0].device_kind}"),
        ("load average at start", " ".join(f"{v:.2f}" for v in os.getloadavg())),
    ]


def default_label() -> str:
    """"CPU (model, N cores)" or e.g. "GPU (NVIDIA H100 80GB HBM3)": a run's name."""
    import jax

    if jax.default_backend() == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return f"CPU ({_cpu_model()}, {cores} cores)"
    return f"{jax.default_backend().upper()} ({jax.devices()[0].device_kind})"


def versions() -> list[tuple[str, str]]:
    out = [("python", platform.python_version())]
    for name in ("functional_bp", "jax", "jaxlib", "numpy", "torch", "sklearn", "optax"):
        try:
            out.append((name, importlib.import_module(name).__version__))
        except Exception:  # noqa: BLE001 - absent optional packages are reported as such
            out.append((name, "not installed"))
    commit = _git("rev-parse", "--short", "HEAD")
    if commit:
        dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--", "functional_bp", "benchmarks") else ""
        out.append(("git commit", commit + dirty))
    return out


def kv_table(pairs) -> str:
    return table(["", ""], [(f"**{k}**", v) for k, v in pairs])


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_block(path: Path, label: str, body: str) -> None:
    """Put ``body`` in the block of ``label`` in ``path`` (created if absent)."""
    begin, end = f"<!-- run:{label} begin -->", f"<!-- run:{label} end -->"
    block = f"{begin}\n{body.strip()}\n{end}\n"
    text = path.read_text() if path.exists() else HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
