"""The documentation builds with ``mkdocs build --strict`` and covers the whole public API.

The build runs in a subprocess of this interpreter (``python -m mkdocs``) into a temporary folder;
any warning (a broken link, a page missing from the nav, an API entry that does not resolve) is an
error under ``--strict``. MathJax is loaded by the reader's browser, so the build needs no network.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import otcollapse

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"mkdocs build --strict failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    return out


def test_docs_build_strict(site: Path) -> None:
    for page in ("index.html", "getting-started/index.html", "concepts/index.html",
                 "howto/index.html", "tutorials/index.html", "api/index.html"):  # fmt: skip
        assert (site / page).is_file(), f"the built site has no {page}"
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    # the API entries are rendered from the docstrings, formulas included (arithmatex spans)
    assert 'id="otcollapse.transport.wasserstein"' in api
    assert 'class="arithmatex"' in api


def _resolve(path: str) -> Any:
    """The object a ``::: dotted.path`` directive documents: the longest importable module
    prefix, then attributes (a submodule wins over a re-exported name, as in griffe)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def test_api_reference_covers_public_api() -> None:
    directives = [
        d
        for page in sorted(DOCS.glob("*.md"))
        for d in re.findall(r"^:::\s*([\w.]+)", page.read_text(encoding="utf-8"), flags=re.M)
    ]
    documented = {id(_resolve(d)) for d in directives}
    missing = [n for n in otcollapse.__all__ if id(getattr(otcollapse, n)) not in documented]
    assert not missing, (
        f"public names without an API entry: {missing}; add `::: module.path.name` for each to "
        "docs/api.md (use the defining module's path: `otcollapse.nets.capture` is the module, "
        "`otcollapse.nets.capture.capture` the function)."
    )
