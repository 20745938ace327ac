"""MkDocs hook: publish the notebooks of ``notebooks/`` as pages of the site.

The notebooks live next to their sources and their build script, outside
``docs/``; this hook adds each ``notebooks/NN-*.ipynb`` to the site's files
under the same path, before mkdocs-jupyter converts them (it renders the
stored outputs and executes nothing).
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]


@event_priority(100)  # before mkdocs-jupyter's on_files
def on_files(files, config):
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb")):
        files.append(File(path.relative_to(ROOT).as_posix(), str(ROOT),
                          config["site_dir"], config["use_directory_urls"]))
    return files
