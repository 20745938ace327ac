"""MkDocs hook: turn the Sphinx roles of the docstrings into cross-references.

The docstrings say ``:func:`~functional_bp.mlp.forward_trace``` as Sphinx
would; rendered as Markdown that arrives as ``:func:<code>...</code>``. This
hook replaces each with an optional cross-reference (a link when the name is
documented on the site, plain code otherwise). A bare name is looked up in
the top-level package first.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):<code>(~?)([\w.]+)</code>")


def _ref(match: re.Match) -> str:
    short, name = match.group(1), match.group(2)
    shown = name.rsplit(".", 1)[-1] if short else name
    target = name if "." in name else f"functional_bp.{name}"
    return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'


def on_page_content(html, page, config, files):
    return ROLE.sub(_ref, html)
