"""The layers hold: each part of the package imports only the parts it may (docs/architecture.md).

Every import statement counts, at the top of a module or inside a function, and type-only
imports too: a layer that needs to name something above it has its seams in the wrong place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers.servers import ROOT

PACKAGE = ROOT / "mailer"

# Layer -> (the modules and packages in it, the layers it may import besides itself).
LAYERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "foundation": (
        ("mailer.clock", "mailer.config", "mailer.errors", "mailer.tokens", "mailer.links",
         "mailer.cron", "mailer.redis_client"),
        (),
    ),
    # Mail and feeds know no database: they build, sign and send bytes, fetch and parse feeds.
    "leaves": (("mailer.mail", "mailer.feeds", "mailer.bounces", "mailer.hooks"),
               ("foundation",)),
    "database": (("mailer.db", "mailer.models", "mailer.migrate"), ("foundation",)),
    "services": (("mailer.services",), ("foundation", "leaves", "database")),
    "runtime": (("mailer.runtime",), ("foundation", "leaves", "database", "services")),
    "tasks": (("mailer.tasks",), ("foundation", "leaves", "database", "services", "runtime")),
    "web": (
        ("mailer.web",),
        ("foundation", "leaves", "database", "services", "runtime", "tasks"),
    ),
    "app": (
        ("mailer", "mailer.celery_app"),
        ("foundation", "leaves", "database", "services", "runtime", "tasks", "web"),
    ),
    "cli": (
        ("mailer.cli", "mailer.bench", "mailer.bench_signups"),
        ("foundation", "leaves", "database", "services", "runtime", "tasks", "web", "app"),
    ),
}

# Libraries that belong to the outer layers: the inner ones must not reach for them.
WEB_AND_QUEUE = ("flask", "flask_wtf", "flask_limiter", "werkzeug", "celery", "kombu")
FORBIDDEN_LIBRARIES = {
    "foundation": WEB_AND_QUEUE,
    "leaves": WEB_AND_QUEUE + ("sqlalchemy",),
    "database": WEB_AND_QUEUE,
    "services": WEB_AND_QUEUE,
}


def layer_of(module: str) -> str:
    """The layer of a module: the longest matching prefix wins (mailer.cli beats mailer)."""
    best, length = None, -1
    for name, (members, _may) in LAYERS.items():
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > length:
                best, length = name, len(member)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) for every import in the source, relative ones resolved, and
    `from mailer import tokens` read as the module mailer.tokens."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                if not is_package:
                    package.pop()
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                submodule = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py")
                package_dir = PACKAGE.parent / candidate.replace(".", "/")
                if submodule.exists() or (package_dir / "__init__.py").exists():
                    out.append((node.lineno, candidate))
                else:
                    out.append((node.lineno, base))
    return out


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """What a module imports that its layer may not."""
    layer = layer_of(module)
    may = {layer, *LAYERS[layer][1]}
    found = []
    for line, target in imported(source, module, is_package):
        top = target.split(".")[0]
        if top == "mailer":
            other = layer_of(target)
            if other not in may:
                found.append(f"{module}:{line} ({layer}) imports {target} ({other})")
        elif top in FORBIDDEN_LIBRARIES.get(layer, ()):
            found.append(f"{module}:{line} ({layer}) imports {target}")
    return found


def package_modules() -> list[Path]:
    versions = PACKAGE / "migrations" / "versions"
    return sorted(p for p in PACKAGE.rglob("*.py") if versions not in p.parents)


def test_every_module_imports_only_what_its_layer_may():
    found = []
    for path in package_modules():
        found += violations(module_name(path), path.read_text(), path.name == "__init__.py")
    assert not found, "imports across layers:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source", "message"),
    [
        ("mailer.mail.message", "from mailer.db import db", "imports mailer.db (database)"),
        ("mailer.mail.smtp", "import sqlalchemy", "imports sqlalchemy"),
        ("mailer.services.deliveries", "def f():\n    from mailer.runtime import runtime",
         "imports mailer.runtime (runtime)"),
        ("mailer.services.render", "from flask import current_app", "imports flask"),
        ("mailer.services.deliveries", "from mailer.tasks.delivery import send_batch",
         "imports mailer.tasks.delivery (tasks)"),
        ("mailer.services.reports", "from mailer.web import auth", "imports mailer.web.auth (web)"),
        ("mailer.tasks.delivery", "from mailer import create_app", "imports mailer (app)"),
        ("mailer.web.tracking", "from mailer.cli import cli", "imports mailer.cli (cli)"),
        ("mailer.models.issues", "from mailer.services import deliveries",
         "imports mailer.services.deliveries (services)"),
        ("mailer.config", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
         "    from mailer.links import Links\n    from mailer.db import Base", "mailer.db"),
    ],
)
def test_the_rule_sees_imports_across_layers(module, source, message):
    (found,) = violations(module, source)
    assert message in found


def test_imports_a_layer_may_make_pass():
    assert violations("mailer.services.render", "from mailer.mail import placeholders as ph") == []
    assert violations("mailer.web.admin", "from . import auth", is_package=False) == []
    assert violations("mailer.cli.bench", "from mailer import bench, create_app") == []
