"""The Jinja2 environment for email templates (autoescaped HTML, strict undefined)."""

from __future__ import annotations

import textwrap
from functools import lru_cache

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from mailer.config import PROJECT_DIR

EMAIL_TEMPLATES = PROJECT_DIR / "templates" / "email"


def _wrap(value: str, width: int = 68, indent: str = "") -> str:
    """Text parts: wrap prose, never break a word or a URL."""
    lines = textwrap.wrap(value, width=width, break_long_words=False, break_on_hyphens=False)
    return ("\n" + indent).join(lines)


@lru_cache(maxsize=1)
def email_env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(EMAIL_TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # The templates ship with the code: a new release restarts the processes. Checking
        # each template file's time before every use was a tenth of a confirmation's build.
        auto_reload=False,
    )
    env.filters["wrap"] = _wrap
    return env


def render_pair(name: str, **context) -> tuple[str, str]:
    """Render `name`.txt and `name`.html with the same context: (text, html)."""
    env = email_env()
    text = env.get_template(f"{name}.txt").render(**context)
    html = env.get_template(f"{name}.html").render(**context)
    return text, html
