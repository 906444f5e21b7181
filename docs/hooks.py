"""MkDocs hook: the docstrings cross-reference in Sphinx's roles (:func:`x`, :class:`~a.b.C`),
which mkdocstrings shows as typed; drop the role and, for ``~``, keep the last name, as Sphinx
would. Registered in mkdocs.yml (``hooks:``)."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):(<code>)~?([\w.]*?)([\w]+)(</code>)")


def _name(m: re.Match[str]) -> str:
    tilde = m.group(0).split(":", 2)[2].startswith("<code>~")
    return f"{m.group(1)}{'' if tilde else m.group(2)}{m.group(3)}{m.group(4)}"


def on_page_content(html: str, **kwargs: object) -> str:
    return _ROLE.sub(_name, html)
