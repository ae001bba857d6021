"""The documentation in ``docs/`` is checked against the code, so that a change to either shows.

What is checked
---------------
* The site builds with ``mkdocs build --strict``, and ``docs/api.md`` covers ``otcollapse.__all__``.
* **Snippets with shown output.** A ```` ```python ```` block followed directly (blank lines only)
  by a ```` ```text ```` block is run, and what it prints is compared with the text block.
* **Every python block** parses, and its ``otcollapse`` imports resolve.
* **Quoted messages** (``MESSAGES``). An error or warning message a page quotes is triggered with
  the documented input and must match the real one, up to the parts of the quote marked as
  varying; a page's claim that a message says something is checked for the words it must hold.
* **Quoted signatures.** ``name(a, b=1, *, c=None) -> T`` on a page (inline code or a text
  block, when it has ``*`` or ``->``) has the parameters, kinds and defaults of the function.
* **What the pages cite**: every ``otcollapse.x.y`` resolves, every repository path exists,
  every test named as checking something exists, quoted result strings are the ones produced.
* **Numbers of expensive runs** (benchmarks, training) are not re-run. Each one in ``TRACED`` must
  be in the committed results file it comes from, to its printed precision, or the page must
  name the command (script or test) that produced it.

Conventions for snippets
------------------------
* A snippet runs in this process, in a fresh namespace and a fresh temporary working directory,
  with the warning filters restored afterwards (a ``ConvergenceWarning`` it did not ask for is an
  error, as everywhere in the suite) and torch on one thread (small solves run many times faster
  on a busy machine). Tracebacks give the page's own line numbers. Snippets with shown output
  must be fast: under about 5 s each; mark slower ones with a skip.
* Output is compared token by token, whitespace ignored. Words and punctuation must agree
  exactly. A number agrees when it is within ``max(rtol * |doc|, u)``, with ``u`` one unit in the
  doc's last printed digit for a number with a decimal point or an exponent (``0.1`` for
  ``1.0``, ``1e-06`` for ``1e-06``: printing the same value after a tiny numerical change moves
  that digit at most) and ``u = 0`` for an integer; ``rtol = 1e-6`` unless a marker says otherwise.
* A marker is an HTML comment (invisible on the site) on the last non-blank line before the
  opening ```` ```python ```` fence:

  - ``<!-- docs-test: skip (reason) -->`` — not run; reported as a skip with the reason;
  - ``<!-- docs-test: rtol=1e-3 (reason) -->`` — a looser relative tolerance for this snippet.

  A marker without a reason, or one this file does not understand, fails
  ``test_markers_are_valid``: nothing is skipped silently. ``PENDING_SKIPS`` lists the slow
  snippets of pages whose marker has not been written yet; each is skipped with its reason.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib
import importlib.util
import inspect
import io
import itertools
import math
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import otcollapse

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))

DEFAULT_RTOL = 1e-6


# ------------------------------------------------------------------------------ the build


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
        for page in PAGES
        for d in re.findall(r"^:::\s*([\w.]+)", page.read_text(encoding="utf-8"), flags=re.M)
    ]
    documented = {id(_resolve(d)) for d in directives}
    missing = [n for n in otcollapse.__all__ if id(getattr(otcollapse, n)) not in documented]
    assert not missing, (
        f"public names without an API entry: {missing}; add `::: module.path.name` for each to "
        "docs/api.md (use the defining module's path: `otcollapse.nets.capture` is the module, "
        "`otcollapse.nets.capture.capture` the function)."
    )


# ------------------------------------------------------------------------------ reading pages

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+)(?P<lang>[\w+-]*)\s*$")
_MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<body>.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: its language, the line of its opening fence (1-based), the
    line of its closing fence, its text (de-indented) and the marker above it, if any."""

    page: str
    lang: str
    line: int
    end: int
    code: str
    marker: str | None

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, start = m["indent"], i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != m["fence"]:
            body.append(
                lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].strip()
            )
            i += 1
        above = [ln.strip() for ln in lines[:start] if ln.strip()]
        marker = _MARKER.match(above[-1]) if above else None
        found.append(
            Block(
                path.name,
                m["lang"],
                start + 1,
                i + 1,
                "\n".join(body) + "\n",
                marker["body"] if marker else None,
            )
        )
        i += 1
    return found


BLOCKS = {p.name: _blocks(p) for p in PAGES}


def _snippets() -> list[tuple[Block, Block]]:
    """Every python block directly followed (blank lines only) by a text block."""
    pairs = []
    for page, blocks in BLOCKS.items():
        lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
        for code, out in itertools.pairwise(blocks):
            between = lines[code.end : out.line - 1]
            if code.lang == "python" and out.lang == "text" and not any(s.strip() for s in between):
                pairs.append((code, out))
    return pairs


SNIPPETS = _snippets()


def _page_text(page: str) -> str:
    """A page with every run of whitespace made one space (quotes wrap across lines)."""
    return " ".join((DOCS / page).read_text(encoding="utf-8").split())


# ------------------------------------------------------------------------------ markers

#: Slow snippets of pages owned elsewhere that still lack their skip marker:
#: (page, a line of the block) -> reason. Each should become ``<!-- docs-test: skip (reason) -->``
#: above its block; an entry whose block has the marker is harmless and can then be deleted.
PENDING_SKIPS: dict[tuple[str, str], str] = {
    (
        "networks.md",
        "net = ResNet((16, 32), (2, 2), in_channels=1, n_classes=10)",
    ): "trains a ResNet for 15 epochs (about 6 s)",
    (
        "networks.md",
        "res = ResidualMLP(64, 64, 4, 10, batchnorm=True)",
    ): "trains two networks for 40 epochs",
}


def _directive(block: Block) -> tuple[str, dict[str, Any]]:
    """``("run", {"rtol": ...})`` or ``("skip", {"reason": ...})`` for a python block."""
    for (page, line), reason in PENDING_SKIPS.items():
        if block.page == page and line in block.code and block.marker is None:
            return "skip", {"reason": f"{reason} (marker pending in docs/{page})"}
    if block.marker is None:
        return "run", {"rtol": DEFAULT_RTOL}
    m = re.fullmatch(r"skip\s*\((?P<reason>.+)\)", block.marker)
    if m:
        return "skip", {"reason": m["reason"]}
    m = re.fullmatch(r"rtol\s*=\s*(?P<rtol>[0-9.eE+-]+)\s*\((?P<reason>.+)\)", block.marker)
    if m:
        return "run", {"rtol": float(m["rtol"])}
    raise ValueError(
        f"{block.where}: marker 'docs-test: {block.marker}' is not understood; write "
        "'<!-- docs-test: skip (reason) -->' or '<!-- docs-test: rtol=1e-3 (reason) -->'."
    )


def test_markers_are_valid() -> None:
    problems = []
    for blocks in BLOCKS.values():
        for b in blocks:
            if b.marker is None:
                continue
            if b.lang != "python":
                problems.append(f"{b.where}: a docs-test marker above a {b.lang or 'plain'} block")
                continue
            try:
                _directive(b)
            except ValueError as err:
                problems.append(str(err))
    for page, line in PENDING_SKIPS:
        if not any(line in b.code for b in BLOCKS.get(page, []) if b.lang == "python"):
            problems.append(f"PENDING_SKIPS: no python block of docs/{page} holds {line!r}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------ snippets

_TOKEN = re.compile(
    r"(?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)(?![\w.])|(?P<word>\w+)|(?P<punct>\S)"
)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, token, line index) for every token of ``text``."""
    out = []
    for k, line in enumerate(text.splitlines()):
        for m in _TOKEN.finditer(line):
            out.append((m.lastgroup or "punct", m.group(), k))
    return out


def _unit(number: str) -> float:
    """One unit in the last printed digit of a number with a point or an exponent, else 0."""
    mantissa, _, exponent = number.lower().partition("e")
    if "." not in mantissa and not exponent:
        return 0.0
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def _number_agrees(doc: str, got: str, rtol: float) -> bool:
    d, g = float(doc), float(got)
    return abs(g - d) <= max(rtol * abs(d), _unit(doc)) * (1 + 1e-9)  # 1e-9: the unit's rounding


def _compare(doc: str, got: str, rtol: float) -> str | None:
    """None when ``got`` agrees with ``doc`` (see the module docstring), else what differs."""
    want, have = _tokens(doc), _tokens(got)
    for (kind, w, line), (gkind, g, _) in zip(want, have, strict=False):
        if kind == "num" and gkind == "num":
            if not _number_agrees(w, g, rtol):
                return (
                    f"line {line + 1} of the text block: {w} on the page, {g} printed (rtol={rtol})"
                )
        elif w != g:
            return f"line {line + 1} of the text block: {w!r} on the page, {g!r} printed"
    if len(want) != len(have):
        return f"the page shows {len(want)} tokens, the snippet printed {len(have)}"
    return None


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Any:
    """One torch thread: on a busy machine small solves run many times faster (the printed
    digits do not depend on it)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(block: Block) -> str:
    """Run a python block in a fresh namespace; what it printed."""
    code = compile("\n" * block.line + block.code, str(DOCS / block.page), "exec")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        exec(code, {"__name__": "__docs__"})
    return buf.getvalue()


@pytest.mark.parametrize(
    ("code", "shown"), SNIPPETS, ids=[f"{c.page}:{c.line}" for c, _ in SNIPPETS]
)
def test_snippet_prints_what_the_page_shows(
    code: Block, shown: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    action, opts = _directive(code)
    if action == "skip":
        pytest.skip(f"{code.where}: {opts['reason']}")
    monkeypatch.chdir(tmp_path)
    got = _run(code)
    problem = _compare(shown.code, got, opts["rtol"])
    if problem:
        diff = "\n".join(
            difflib.unified_diff(
                shown.code.splitlines(),
                got.splitlines(),
                f"{shown.where} (the page)",
                "printed",
                lineterm="",
            )
        )
        pytest.fail(
            f"{code.where}: the output differs from the page: {problem}\n{diff}", pytrace=False
        )


def test_output_comparison_rules() -> None:
    assert _compare("[0.6 1.17]  True", "[0.6  1.2 ] True", DEFAULT_RTOL) is not None
    assert _compare("1.17163 x", "1.17164  x", DEFAULT_RTOL) is None  # the last digit may move
    assert _compare("1.17163", "1.17166", DEFAULT_RTOL) is not None
    assert _compare("0.0 3", "3.9e-16 3", DEFAULT_RTOL) is None  # 0.0: zero to one decimal
    assert _compare("474 1e-06", "475 9.6e-07", DEFAULT_RTOL) is not None  # integers are exact
    assert _compare("layer0 16→32", "layer1 16→32", DEFAULT_RTOL) is not None
    assert _compare("a b", "a b c", DEFAULT_RTOL) is not None


# ------------------------------------------------------------------------------ every block


def _missing_import(module: str, name: str | None) -> str | None:
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        return f"cannot import {module}: {err}"
    if name is None or name == "*" or hasattr(mod, name):
        return None
    if importlib.util.find_spec(f"{module}.{name}") is not None:
        return None
    return f"{module} has no {name!r}"


def test_python_blocks_parse_and_their_imports_resolve() -> None:
    problems, n = [], 0
    for blocks in BLOCKS.values():
        for b in blocks:
            if b.lang != "python":
                continue
            n += 1
            try:
                tree = ast.parse(b.code)
            except SyntaxError as err:
                problems.append(f"docs/{b.page}:{b.line + (err.lineno or 0)}: {err.msg}")
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "otcollapse"
                ):
                    wanted = [(node.module, a.name) for a in node.names]
                elif isinstance(node, ast.Import):
                    wanted = [(a.name, None) for a in node.names if a.name.startswith("otcollapse")]
                else:
                    continue
                for module, name in wanted:
                    problem = _missing_import(module, name)
                    if problem:
                        problems.append(f"docs/{b.page}:{b.line + node.lineno}: {problem}")
    assert n > 40, "the pages' python blocks were not found"
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------ quoted messages


def _raised(kind: type[BaseException], fn: Callable[[], Any]) -> str:
    with pytest.raises(kind) as info:
        fn()
    return str(info.value)


def _warned(kind: type[Warning], fn: Callable[[], Any]) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    messages = [str(w.message) for w in caught if issubclass(w.category, kind)]
    assert messages, f"no {kind.__name__} was issued"
    return messages[0]


def _cli(args: list[str]) -> str:
    """stderr of ``otcollapse ARGS``, run in this process; the exit status must be 2."""
    from otcollapse.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(args)
    assert status == 2, f"otcollapse {' '.join(args)} exited with {status}, not 2"
    return err.getvalue()


def _clouds(n: int = 50, m: int = 60, d: int = 3) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(0)
    return g.normal(size=(n, d)), g.normal(size=(m, d))


def _auto_reason(tmp: Path) -> str:
    from otcollapse import wasserstein

    x, y = _clouds()
    return wasserstein(x, y, max_dense_bytes=10_000).params["auto"]


def _sinkhorn_warning(tmp: Path) -> str:
    from otcollapse import ConvergenceWarning, wasserstein

    x, y = _clouds(m=50)
    return _warned(ConvergenceWarning, lambda: wasserstein(x, y, method="sinkhorn", max_iter=3))


def _exact_over_budget(tmp: Path) -> str:
    from otcollapse import wasserstein

    x, y = _clouds()
    return _raised(ValueError, lambda: wasserstein(x, y, method="exact", max_dense_bytes=10_000))


def _assignment_unequal(tmp: Path) -> str:
    from otcollapse import wasserstein

    x, y = _clouds()
    return _raised(ValueError, lambda: wasserstein(x, y, method="assignment"))


def _keops_backend(tmp: Path) -> str:
    from otcollapse import wasserstein

    if importlib.util.find_spec("pykeops") is not None:
        pytest.skip("pykeops is installed: the backend runs")
    x, y = _clouds(m=50)
    return _raised(
        ValueError, lambda: wasserstein(x, y, method="sinkhorn", backend="geomloss-online")
    )


def _geomloss_online_without_keops(tmp: Path) -> str:
    import torch
    from geomloss import SamplesLoss

    if importlib.util.find_spec("pykeops") is not None:
        pytest.skip("pykeops is installed: GeomLoss's online backend runs")
    x, y = (torch.as_tensor(c) for c in _clouds(m=50))
    loss = SamplesLoss("sinkhorn", p=2, blur=0.5, backend="online")
    return _raised(NameError, lambda: loss(x, y))


def _cuda_grid(tmp: Path) -> str:
    import torch

    from otcollapse.experiments import load_grid

    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA GPU here")
    return _raised(ValueError, lambda: load_grid({"base": {"quick": True, "device": "cuda"}}))


def _swept_device(tmp: Path) -> str:
    from otcollapse.experiments import load_grid

    grid = {"base": {"quick": True}, "grid": {"device": ["cpu", "cuda"]}}
    return _raised(ValueError, lambda: load_grid(grid))


def _cli_missing_file(tmp: Path) -> str:
    return _cli(["run", "--data", str(tmp / "missing.npz"), "--out", str(tmp / "out")])


def _cli_split_both_on_disk(tmp: Path) -> str:
    np.savez(tmp / "mine.npz", X=np.ones((20, 3), dtype=np.float32), y=np.arange(20) % 2)
    return _cli(
        ["run", "--data", str(tmp / "mine.npz"), "--split", "both", "--out", str(tmp / "o")]
    )


def _npz_with_nan(tmp: Path) -> str:
    from otcollapse.data import from_folder

    X = np.ones((20, 3))
    X[2, 1] = np.nan
    np.savez(tmp / "nandata.npz", X=X, y=np.arange(20) % 2)
    return _raised(ValueError, lambda: from_folder(tmp / "nandata.npz"))


def _capture_without_blocks(tmp: Path) -> str:
    import torch
    from torch import nn

    from otcollapse import capture

    net = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), nn.Linear(4, 2))
    data = (torch.ones(10, 3), torch.arange(10) % 2)
    return _raised(ValueError, lambda: capture(net, data))


def _unnormalised_weights(tmp: Path) -> str:
    from otcollapse.collapse import nc1

    x, _ = _clouds()
    return _raised(ValueError, lambda: nc1(x, np.arange(50) % 2, weights=np.full(50, 0.04)))


def _trajectory_slice(tmp: Path) -> str:
    from otcollapse import Trajectory

    x, _ = _clouds()
    traj = Trajectory.from_arrays([x, x + 1, x + 2])
    return _raised(TypeError, lambda: traj[0:2])


def _metadata_not_json(tmp: Path) -> str:
    from otcollapse import Trajectory, save_trajectory

    x, _ = _clouds()
    traj = Trajectory.from_arrays([x], metadata={"made_by": object()})
    return _raised(ValueError, lambda: save_trajectory(tmp / "t", traj))


def _file_needing_pickle(tmp: Path) -> str:
    from otcollapse import Trajectory, load_trajectory, save_trajectory

    x, _ = _clouds()
    path = save_trajectory(tmp / "t", Trajectory.from_arrays([x], labels=np.arange(50) % 2))
    with np.load(path, allow_pickle=False) as f:
        entries = {k: f[k] for k in f.files}
    entries["labels"] = np.array([object()] * 50, dtype=object)  # needs pickle to load
    np.savez(path, **entries)
    return _raised(ValueError, lambda: load_trajectory(path))


def _two_widths(tmp: Path) -> Any:
    from otcollapse import Trajectory

    x, _ = _clouds()
    return Trajectory.from_arrays([x, np.hstack([x, x])])


def _profile_across_widths(tmp: Path) -> str:
    from otcollapse import transport_profile

    traj = _two_widths(tmp)
    return _raised(ValueError, lambda: transport_profile(traj))


def _geodesic_gromov(tmp: Path) -> str:
    from otcollapse import Trajectory, geodesic_test

    x, _ = _clouds()
    traj = Trajectory.from_arrays([x, x + 1, x + 2])
    return _raised(ValueError, lambda: geodesic_test(traj, transport="gromov"))


def _big_jacobian(tmp: Path) -> str:
    from otcollapse.surrogates import fit_perturbed
    from otcollapse.surrogates.perturbation import perturbation_jacobian

    h0 = np.random.default_rng(0).normal(size=(1000, 6))
    sol = fit_perturbed(h0, np.arange(1000) % 2, beta=10.0, lambda_w=0.3, lambda_h=0.2)
    return _raised(ValueError, lambda: perturbation_jacobian(sol))  # (1000 + 2) * 6 unknowns


@dataclass(frozen=True)
class Message:
    """A message a page quotes, or says something about.

    ``text`` is on the page (whitespace runs count as one space). Without ``says``, ``text`` is a
    quote of the message, checked against the real one: every part listed in ``vary`` may differ
    (it depends on the input), the rest must be in the message as written. With ``says``, ``text``
    is the page's claim about the message, and the message must contain each of ``says``.
    ``trigger(tmp_path)`` produces the message with the input the page describes.
    """

    page: str
    text: str
    trigger: Callable[[Path], str]
    vary: tuple[str, ...] = ()
    says: tuple[str, ...] | None = None


MESSAGES = [
    # quotes (the quotes inside the text blocks of run snippets are checked there)
    Message(
        "transport.md",
        "dense matrices (6.0 GiB) exceed max_dense_bytes (2.0 GiB): chunked Sinkhorn",
        _auto_reason,
        vary=("6.0 GiB", "2.0 GiB"),
    ),
    Message(
        "transport.md",
        "sinkhorn did not converge (marginal error (L1): 0.00018767906219715937); the value "
        "12.3662 is not certified. Raise max_iter or eps (or GeomLoss's scaling), or use an "
        "exact method.",
        _sinkhorn_warning,
        vary=("0.00018767906219715937", "12.3662"),
    ),
    Message(
        "installation.md",
        "backend='geomloss-online' needs pykeops (the 'keops' extra, on a GPU machine); use "
        "backend='geomloss' or 'torch'.",
        _keops_backend,
    ),
    Message(
        "installation.md", "name 'generic_logsumexp' is not defined", _geomloss_online_without_keops
    ),
    Message("sweeps.md", "device 'cuda' asked for, but torch sees no CUDA GPU", _cuda_grid),
    Message("getting-started.md", "otcollapse: error: ...", _cli_missing_file, vary=("...",)),
    # claims about what a message says
    Message(
        "transport.md",
        "else a `ValueError` gives the size and names `sinkhorn` and `sliced`",
        _exact_over_budget,
        says=("KiB", "method='sinkhorn'", "method='sliced'"),
    ),
    Message(
        "transport.md",
        "are refused with a `ValueError` that points to `exact`",
        _assignment_unequal,
        says=("method='exact'",),
    ),
    Message(
        "howto.md",
        "the error message lists candidate module names",
        _capture_without_blocks,
        says=("layers=[", "'0'"),
    ),
    Message(
        "howto.md",
        "(`--split both` is refused)",
        _cli_split_both_on_disk,
        says=("otcollapse: error:", "one split"),
    ),
    Message(
        "howto.md",
        "are ValueErrors that name the data set (the file's name without `.npz`)",
        _npz_with_nan,
        says=("'nandata'", "NaN"),
    ),
    Message(
        "collapse.md",
        "unnormalised vector is refused with a `ValueError` that says so",
        _unnormalised_weights,
        says=("not 1", "normalise"),
    ),
    Message(
        "trajectories.md",
        "A slice is refused: `traj.take_layers([0, 2, 5])`",
        _trajectory_slice,
        says=("take_layers",),
    ),
    Message(
        "trajectories.md",
        "`save_trajectory` refuses metadata that JSON cannot write",
        _metadata_not_json,
        says=("JSON",),
    ),
    Message(
        "trajectories.md",
        "A file that would need pickle is refused with a `ValueError`",
        _file_needing_pickle,
        says=("pickle",),
    ),
    Message(
        "geodesic.md",
        "otherwise a `ValueError` says which to choose",
        _profile_across_widths,
        says=("method='gromov'", "traj.project(dim)", "shortcuts="),
    ),
    Message(
        "geodesic.md",
        '`method="gromov"` is refused (it has no geodesic path)',
        _geodesic_gromov,
        says=("no geodesic path",),
    ),
    Message(
        "sweeps.md",
        "The device cannot be swept (`[grid]` or `[[cells]]`)",
        _swept_device,
        says=("device in [grid] or [[cells]]", "one sweep per device"),
    ),
    Message(
        "perturbation.md",
        "It refuses more than 6000 unknowns",
        _big_jacobian,
        says=("6012 unknowns", "> 6000"),
    ),
]


def _quote_pattern(text: str, vary: tuple[str, ...]) -> str:
    """A regular expression for a quote: the parts in ``vary`` match anything."""
    pattern = re.escape(text)
    for part in vary:
        pattern = pattern.replace(re.escape(part), ".+?")
    return pattern


@pytest.mark.parametrize("msg", MESSAGES, ids=[f"{m.page}:{m.text[:40]}" for m in MESSAGES])
def test_quoted_message_matches_the_code(msg: Message, tmp_path: Path) -> None:
    text = " ".join(msg.text.split())
    assert text in _page_text(msg.page), (
        f"docs/{msg.page} no longer holds {text!r}; update MESSAGES in tests/test_docs.py"
    )
    real = " ".join(msg.trigger(tmp_path).split())
    if msg.says is not None:
        missing = [s for s in msg.says if s not in real]
        assert not missing, f"docs/{msg.page}: {text!r}, but the message lacks {missing}: {real!r}"
        return
    assert re.search(_quote_pattern(text, msg.vary), real), (
        f"docs/{msg.page} quotes {text!r} (varying: {msg.vary}); the code says {real!r}"
    )


def test_quoted_result_strings_are_the_ones_produced() -> None:
    """transport.md's tables of ``quantity`` and ``gap_kind`` list what the methods return."""
    from otcollapse import wasserstein

    x, y = _clouds(40, 40)
    results = {
        "exact": wasserstein(x, y, method="exact"),
        "assignment": wasserstein(x, y, method="assignment"),
        "sinkhorn": wasserstein(x, y, method="sinkhorn", eps=1.0),
        "sinkhorn (debias)": wasserstein(x, y, method="sinkhorn", eps=1.0, debias=True),
        "sliced": wasserstein(x, y, method="sliced"),
        "gaussian": wasserstein(x, y, method="gaussian"),
        "gromov": wasserstein(x, y[:, :2], method="gromov"),
    }
    page = (DOCS / "transport.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r'^\| `"([^`]+)"` \| ([^|]+) \|', page, flags=re.M))
    problems = []
    for name, res in results.items():
        method = name.split()[0]
        if res.quantity not in rows or f"`{method}`" not in rows[res.quantity]:
            problems.append(
                f"{name} returns quantity {res.quantity!r}: no row of the quantity "
                f"table names `{method}` for it"
            )
    gap_row = re.search(r"^\| `gap_kind` \| (.*) \|$", page, flags=re.M)
    assert gap_row, "transport.md has no `gap_kind` row in its TransportResult table"
    documented = set(re.findall(r'`"([^`]+)"`', gap_row.group(1)))
    produced = {r.gap_kind for r in results.values()} - {None}
    if documented != produced:
        problems.append(
            f"the `gap_kind` row lists {sorted(documented)}; the methods return {sorted(produced)}"
        )
    assert not problems, "transport.md: " + "\n".join(problems)


def test_dense_budget_sizes_follow_the_memory_model() -> None:
    """The largest n = m a method takes at the default 2 GiB, as the pages quote it."""
    from otcollapse import TransportSpec

    budget = 2 * 1024**3
    for method in ("exact", "assignment"):
        spec = TransportSpec.create(method)
        n = math.isqrt(int(budget / spec.dense_bytes(1, 1))) + 1
        while spec.dense_bytes(n, n) > budget:
            n -= 1
        quoted = f"{n:,}".replace(",", "{,}")
        for page in ("transport.md", "howto.md"):
            assert quoted in _page_text(page), (
                f"docs/{page}: `{method}` takes n = m <= {n} at 2 GiB; the page should say "
                f"${quoted}$"
            )


# ------------------------------------------------------------------------------ signatures

_MODULES = (
    "otcollapse",
    "otcollapse.constructions",
    "otcollapse.io",
    "otcollapse.transport",
    "otcollapse.geodesic",
    "otcollapse.collapse",
    "otcollapse.nets",
    "otcollapse.data",
    "otcollapse.surrogates",
    "otcollapse.experiments",
)
_SIGNATURE = re.compile(
    r"(?<![\w.])(?P<name>(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)"
    r"\((?P<params>(?:[^()`]|\([^()`]*\))*)\)(?P<arrow>\s*->\s*\w+)?"
)


def _lookup(name: str) -> Any:
    """The otcollapse function or class a quoted ``name(...)`` names: a dotted path, a name of one
    of the public modules, or a method of ``Trajectory`` (``traj.`` stands for it); else None."""
    parts = name.split(".")
    if parts[0] == "traj":
        parts[0] = "Trajectory"
    obj: Any = None
    if parts[0] == "otcollapse":
        with contextlib.suppress(ImportError, AttributeError):
            obj = _resolve(".".join(parts))
    else:
        for module in _MODULES:
            with contextlib.suppress(AttributeError):
                obj = importlib.import_module(module)
                for p in parts:
                    obj = getattr(obj, p)
                break
            obj = None
    if not callable(obj) or not getattr(obj, "__module__", "").startswith("otcollapse"):
        return None  # unknown, or another library's (torch.load, np.load)
    return obj


def _quoted_calls() -> list[tuple[str, str, str, bool]]:
    """(page, name, parameters, full) for every ``name(...)`` in a page's inline code, and in its
    text blocks when ``full``: a signature, with a ``*`` parameter or an ``->``."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        prose = re.sub(r"^[ \t]*```.*?^[ \t]*```", "", text, flags=re.S | re.M)
        spans = [(s, True) for s in re.findall(r"`([^`]+)`", prose)]
        spans += [(b.code, False) for b in BLOCKS[page.name] if b.lang == "text"]
        for span, inline in spans:
            for m in _SIGNATURE.finditer(span):
                params = " ".join(m["params"].split())
                full = bool(re.search(r"(^|,)\s*\*{1,2}\w*\s*(,|$)", params) or m["arrow"])
                if full or inline:
                    found.append((page.name, m["name"], params, full))
    return found


def _default(node: ast.expr | None) -> tuple[Any, ...] | None:
    """The values a documented default allows: ``"a"|"b"`` lists choices (the first is the
    default), ``...`` allows anything (None)."""
    if node is None:
        return ()
    if isinstance(node, ast.Constant) and node.value is Ellipsis:
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left = _default(node.left)
        return left[:1] if left else left
    return (eval(compile(ast.Expression(node), "<doc>", "eval"), {}),)  # literals, arithmetic


def _parameters(obj: Any) -> inspect.Signature:
    sig = inspect.signature(obj)
    return sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "self"])


def _signature_problem(obj: Any, args: ast.arguments) -> str | None:
    """What a quoted signature gets wrong: parameters, their kinds, their defaults."""
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    doc = [(p.arg, "positional", _default(d)) for p, d in zip(positional, defaults, strict=True)]
    doc += [(args.vararg.arg, "*", ())] if args.vararg else []
    doc += [
        (p.arg, "keyword-only", _default(d))
        for p, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
    ]
    doc += [(args.kwarg.arg, "**", ())] if args.kwarg else []
    kinds = {
        inspect.Parameter.VAR_POSITIONAL: "*",
        inspect.Parameter.VAR_KEYWORD: "**",
        inspect.Parameter.KEYWORD_ONLY: "keyword-only",
    }
    sig = _parameters(obj)
    real = [(p.name, kinds.get(p.kind, "positional"), p.default) for p in sig.parameters.values()]
    if [(n, k) for n, k, _ in doc] != [(n, k) for n, k, _ in real]:
        return f"the code has {sig}"
    for (n, _, allowed), (_, _, value) in zip(doc, real, strict=True):
        if allowed and value is not inspect.Parameter.empty and value not in allowed:
            return f"{n} defaults to {value!r}, not {allowed[0]!r}"
    return None


def _call_problem(obj: Any, args: ast.arguments) -> str | None:
    """Why a quoted call ``name(a, b, c=...)`` would not bind to the function, if it would not."""
    n_required = len(args.posonlyargs + args.args) - len(args.defaults)
    named = [p.arg for p in (args.posonlyargs + args.args)[n_required:] + args.kwonlyargs]
    sig = _parameters(obj)
    try:
        sig.bind(*[None] * n_required, **dict.fromkeys(named))
    except TypeError as err:
        return f"{err}; the code has {sig}"
    return None


def test_quoted_signatures_and_calls_match_the_code() -> None:
    """A quoted signature (``f(a, *, b=1) -> T``) has the function's parameters, kinds and
    defaults; a quoted call (``f(x, y, method=...)``) binds to the function."""
    problems, checked = [], {True: 0, False: 0}
    for page, name, params, full in _quoted_calls():
        obj = _lookup(name)
        try:
            fn = ast.parse(f"def f({params}): pass").body[0]
        except SyntaxError:
            fn = None  # a call with "..." or an expression for an argument: not checked
        if obj is None or not isinstance(fn, ast.FunctionDef):
            continue
        checked[full] += 1
        problem = (_signature_problem if full else _call_problem)(obj, fn.args)
        if problem:
            problems.append(f"docs/{page}: `{name}({params})`: {problem}")
    assert checked[True] >= 15 and checked[False] >= 15, f"too few quoted calls found: {checked}"
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------ what pages cite


def test_quoted_constants_have_their_values() -> None:
    """``NAME = value`` in inline code (``rtol = DEFAULT_RTOL = 1e-10`` too) is the module-level
    constant of that name in otcollapse's source."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "otcollapse").rglob("*.py"))
    problems, n = [], 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for name, value in re.findall(r"`(?:[a-z_]+ = )?([A-Z][A-Z0-9_]{2,}) = ([^`]+)`", text):
            n += 1
            defined = re.findall(rf"^{name}\s*(?::[^=\n]+)?=\s*(.+?)\s*(?:#.*)?$", source, re.M)
            if not defined:
                problems.append(f"docs/{page.name}: no constant {name} in otcollapse")
            elif ast.literal_eval(defined[0]) != ast.literal_eval(value):
                problems.append(f"docs/{page.name}: {name} = {value}, the code: {defined[0]}")
    assert n >= 3, "the quoted constants were not found"
    assert not problems, "\n".join(problems)


def test_cited_names_paths_and_tests_exist() -> None:
    problems = []
    tests_source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("*.py"))
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for dotted in sorted(set(re.findall(r'(?<!["\w.])(otcollapse(?:\.[A-Za-z_]\w*)+)', text))):
            try:
                _resolve(dotted)
            except (ImportError, AttributeError) as err:
                problems.append(f"docs/{page.name}: `{dotted}` does not resolve ({err})")
        paths = re.findall(r"(?<![\w/.-])((?:benchmarks|tests|docs|tutorials)/[\w./-]*\w)", text)
        for path in sorted(set(paths)):
            if not (ROOT / path).exists():
                problems.append(f"docs/{page.name}: `{path}` does not exist")
        for name in sorted(set(re.findall(r"\btest `(test_\w+)`", text))):
            if f"def {name}(" not in tests_source:
                problems.append(f"docs/{page.name}: no test `{name}` in tests/")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------ expensive numbers


@dataclass(frozen=True)
class Traced:
    """Numbers of an expensive run quoted on a page, and where they come from.

    ``text`` is on the page and holds each of ``numbers``. ``source`` is a committed results file
    (each number must be in it, rounded as printed on the page) or the script or test that made
    them, which must exist and be named on the page.
    """

    page: str
    text: str
    numbers: tuple[str, ...]
    source: str


CAL = "docs/figures/mufm_calibration_numbers.txt"
PIPELINE = "benchmarks/results/pipeline.json"
PIPELINE_MD = "benchmarks/results/pipeline.md"

TRACED = [
    Traced(
        "wd-depth.md",
        "| `otcollapse reproduce wd-depth --data digits` | 7:11.32 (7.2 min) | 789.08 s + 25.08 s |",
        ("7", "11.32", "789.08", "25.08"),
        "docs/figures/wd_depth_time.txt",
    ),
    Traced(
        "wd-depth.md",
        "| `otcollapse reproduce wd-depth --data mnist1d` | 14:26.09 (14.4 min) | 1623.18 s + 38.08 s |",
        ("14", "26.09", "1623.18", "38.08"),
        "docs/figures/wd_depth_time.txt",
    ),
    Traced(
        "wd-depth.md",
        "the ResNet's LSS goes from 1.42 ± 0.035 at weight decay 0 to 1.17 ± 0.012 at 5e-3",
        ("1.42", "0.035", "1.17", "0.012"),
        "docs/figures/wd_depth_digits.json",
    ),
    Traced(
        "wd-depth.md",
        "on MNIST-1D from 1.72 ± 0.14 to 1.27 ± 0.031 (4 blocks) and from 3.29 ± 0.12 to 1.27 ± 0.1",
        ("1.72", "0.14", "1.27", "0.031", "3.29", "0.12", "0.1"),
        "docs/figures/wd_depth_mnist1d.json",
    ),
    Traced(
        "wd-depth.md",
        "(0.789 ± 0.16 at 0, 0.574 ± 0.086 at 5e-3)",
        ("0.789", "0.16", "0.574", "0.086"),
        "docs/figures/wd_depth_mnist1d.json",
    ),
    Traced(
        "wd-depth.md",
        "blocks: -0.856 ± 0.2 at 0, -1.47 ± 0.16 at 5e-3)",
        ("-0.856", "0.2", "-1.47", "0.16"),
        "docs/figures/wd_depth_digits.json",
    ),
    Traced(
        "wd-depth.md",
        "there the calibration's NC1 discrepancy is 0.74–1.28 on digits",
        ("0.74", "1.28"),
        "docs/figures/wd_depth_digits.json",
    ),
    Traced(
        "wd-depth.md",
        "1.42–2.29 on MNIST-1D, against at most 0.029 and 0.025",
        ("1.42", "2.29", "0.025"),
        "docs/figures/wd_depth_mnist1d.json",
    ),
    Traced(
        "sweeps.md",
        "| stage computations | 24 (2 train, 10 capture, 10 analyse, 1 calibrate, 1 seed) |",
        ("24",),
        "benchmarks/results/sweep.md",
    ),
    Traced(
        "sweeps.md",
        "34.2 s: train 1.2, capture 0.4, analyse 18.9",
        ("34.2", "1.2", "0.4", "18.9"),
        "benchmarks/results/sweep.md",
    ),
    Traced("sweeps.md", "calibrate 10.8, seed 2.9", ("10.8", "2.9"), "benchmarks/results/sweep.md"),
    Traced(
        "sweeps.md",
        "276.6 s vs 168.0 s: **1.65×**",
        ("276.6", "168.0", "1.65"),
        "benchmarks/results/sweep.md",
    ),
    Traced("sweeps.md", "1.9 ms per task", ("1.9",), "benchmarks/results/sweep.md"),
    Traced("sweeps.md", "| 41.8 KiB |", ("41.8",), "benchmarks/results/sweep.md"),
    Traced(
        "square_loss.md",
        "ρ ≈ 1.5 against 11; smallest margin 0.27 against 0.08",
        ("1.5", "11", "0.27", "0.08"),
        "docs/figures/make_square_loss_figure.py",
    ),
    Traced(
        "square_loss.md",
        "(NC1 ≈ 0.007, NC3 ≈ 0.014), against NC1 ≈ 0.016 and NC3 ≈ 0.36",
        ("0.007", "0.014", "0.016", "0.36"),
        "docs/figures/make_square_loss_figure.py",
    ),
    Traced(
        "square_loss.md",
        "(NC1 0.058 against 0.083)",
        ("0.058", "0.083"),
        "docs/figures/make_square_loss_figure.py",
    ),
    Traced(
        "dufm.md",
        "find 0.0121512 against $\\mathcal L_{DNC} = 0.0124449$",
        ("0.0121512", "0.0124449"),
        "test_low_rank_solution_beats_dnc_for_four_classes",
    ),
    Traced(
        "dufm.md",
        "two go *below* it (best 0.976)",
        ("0.976",),
        "docs/figures/make_surrogate_figures_ulpm_dufm.py",
    ),
    Traced(
        "mufm.md",
        "reach the same objective to $10^{-8}$ and the same measures layer by layer "
        "($W_2^2 < 10^{-10}$)",
        ("10^{-8}", "10^{-10}"),
        "docs/figures/make_mufm_solver_numbers.py",
    ),
    Traced(
        "mufm.md",
        "paired-coupling optimum (objective 0.2388 against the reduced 0.1966)",
        ("0.2388", "0.1966"),
        "docs/figures/mufm_solver_numbers.txt",
    ),
    Traced(
        "mufm.md",
        "it matched the reduced solver in 3 of 12 fits and stopped higher in the others, "
        "7 of those 9 at the paired-coupling optimum",
        ("3", "12", "7", "9"),
        "docs/figures/mufm_solver_numbers.txt",
    ),
    Traced(
        "mufm.md",
        "where the two problems coincide: 4 of 4",
        ("4",),
        "docs/figures/mufm_solver_numbers.txt",
    ),
    Traced(
        "mufm.md",
        "and $L = 2, 3, 6$: 12 of 12)",
        ("12",),
        "docs/figures/mufm_solver_numbers.txt",
    ),
    Traced(
        "mufm.md",
        "global optimum in 4 of 12 problems",
        ("4", "12"),
        "docs/figures/mufm_solver_numbers.txt",
    ),
    Traced(
        "mufm.md",
        "stopped 0.010–0.050 (13–65 %) above it",
        ("0.010", "0.050", "13", "65"),
        "docs/figures/mufm_solver_numbers.txt",
    ),
    Traced(
        "mufm.md",
        "with objective 0.778 against the warm-started branch's 0.104",
        ("0.778", "0.104"),
        "docs/figures/mufm_solver_numbers.txt",
    ),
    Traced("mufm.md", "the 150 samples the run calibrates on", ("150",), CAL),
    Traced(
        "mufm.md",
        "matched the network's last-layer NC1 (0.1961 against 0.1975)",
        ("0.1961", "0.1975"),
        CAL,
    ),
    Traced(
        "mufm.md",
        "its spread (root-mean-square distance to its mean) was 2.48 against the network's 11.2, and $W_2$ between the two last layers 0.91 times the network's spread",
        ("2.48", "11.2", "0.91"),
        CAL,
    ),
    Traced(
        "mufm.md",
        "($\\lambda_{OT} = 0.093$, the search bounded at 0.1, a grid step past the grid's last point 0.01)",
        ("0.093", "0.1", "0.01"),
        CAL,
    ),
    Traced(
        "mufm.md",
        "(1.0006 times the network's own input-to-output $W_2$ at the end), while the MUFM's NC1 rises to 0.386",
        ("1.0006", "0.386"),
        CAL,
    ),
    Traced(
        "mufm.md",
        "after 74 fits it stopped with both weights a factor 16 too small and their ratio right ($J = 0.15$)",
        ("74", "16", "0.15"),
        CAL,
    ),
    Traced(
        "mufm.md",
        "found $(0.023, 0.0046)$, $(0.088, 0.018)$ and $(0.12, 0.025)$",
        ("0.023", "0.0046", "0.088", "0.018", "0.12", "0.025"),
        CAL,
    ),
    Traced("mufm.md", "last layers within 0.8 % of the network's spread", ("0.8",), CAL),
    Traced(
        "mufm.md",
        "The best grid point, $(0.1, 0.03)$, is off by a factor 2 in $\\lambda_{OT}$ and 3 in $\\lambda_H$; the refinement (23 fits here)",
        ("0.1", "0.03", "2", "3", "23"),
        CAL,
    ),
    Traced("mufm.md", "against 0.18 for the NC1-only calibration", ("0.18",), CAL),
    Traced(
        "mufm.md",
        "raises $J$ only to 0.0015–0.003, while moving them by a factor 2 across it (one up, the other down) raises $J$ to 23, and by a decade to 203–204",
        ("0.0015", "0.003", "23", "203", "204"),
        CAL,
    ),
    Traced(
        "mufm.md",
        "which is 7 % of the spread), both weights came back within a factor 1.4",
        ("7", "1.4"),
        CAL,
    ),
    Traced(
        "mufm.md",
        "with 10 % noise $\\lambda_{OT}$ within a factor 1.83 and $\\lambda_H$ 2.3–3.2 times too large (three of the four at the grid's edge, flagged)",
        ("10", "1.83", "2.3", "3.2"),
        CAL,
    ),
    Traced("mufm.md", "it pushed the weights up in 15 of the 16 cases", ("15", "16"), CAL),
    Traced("mufm.md", "took 44 fits, 4.0 s", ("44", "4.0"), CAL),
    Traced(
        "dufm.md",
        "matches $\\mathcal L_{DNC}$ to $2.1\\times10^{-7}$ relative",
        ("2.1",),
        "docs/figures/dufm_kink_numbers.txt",
    ),
    Traced(
        "dufm.md",
        "For $K = 2$ it is $2 - \\sqrt2 = 0.586$",
        ("0.586",),
        "docs/figures/dufm_kink_numbers.txt",
    ),
    Traced(
        "dufm.md",
        "the solver stops unconverged for 5 of the 12 seeds; `fit_dufm` stops unconverged for 0 of 12",
        ("5", "12", "0"),
        "docs/figures/dufm_kink_numbers.txt",
    ),
    Traced(
        "dufm.md",
        "At seed 9 the exact solve alone stops at 0.0093795335 against $\\mathcal L_{DNC} = 0.0093794588$, with relative gradient $5.6\\times10^{-6}$",
        ("9", "0.0093795335", "0.0093794588", "5.6"),
        "docs/figures/dufm_kink_numbers.txt",
    ),
    Traced(
        "dufm.md",
        "Six pre-activations there lie between $5.0\\times10^{-12}$ and $1.2\\times10^{-9}$ from 0 (the next is $1.8\\times10^{-7}$)",
        ("5.0", "1.2", "1.8"),
        "docs/figures/dufm_kink_numbers.txt",
    ),
    Traced(
        "dufm.md",
        "the objective falls by at most $9.8\\times10^{-16}$",
        ("9.8",),
        "docs/figures/dufm_kink_numbers.txt",
    ),
    Traced(
        "dufm.md",
        "`fit_dufm` at seed 9 converges to 0.0093794630, and its smallest pre-activation is $7.0\\times10^{-8}$ from 0",
        ("0.0093794630", "7.0"),
        "docs/figures/dufm_kink_numbers.txt",
    ),
    Traced(
        "dufm.md",
        "(seed 7: 0.0138343, relative gradient $5.8\\times10^{-3}$)",
        ("7", "0.0138343", "5.8"),
        "docs/figures/dufm_kink_numbers.txt",
    ),
    Traced(
        "dufm.md",
        "(relative gradient $1.7\\times10^{-3}$)",
        ("1.7",),
        "docs/figures/dufm_kink_numbers.txt",
    ),
    Traced(
        "transport.md",
        "took 0.64 s against 6.07 s for the POT loop",
        ("0.64", "6.07"),
        "benchmarks/results/transport.md",
    ),
    Traced(
        "transport.md",
        "2.19 s and 705.3 MiB of peak memory",
        ("2.19", "705.3"),
        "benchmarks/results/transport_unrelated-large.md",
    ),
    Traced(
        "transport.md",
        "against 2.75 s and 1180 MiB at $n = 8000$",
        ("2.75", "1180"),
        "benchmarks/results/transport.md",
    ),
    Traced(
        "transport.md",
        "| 8,000 | 2.19 s | 705.3 MiB | 39.7 s, 2896 MiB (same value to 3e-16: 18.1× slower) |",
        ("2.19", "705.3", "39.7", "2896", "3e-16", "18.1"),
        "benchmarks/results/transport_unrelated-large.md",
    ),
    Traced(
        "transport.md",
        "| 20,000 | 14.0 s | 806.3 MiB |",
        ("14.0", "806.3"),
        "benchmarks/results/transport_unrelated-large.md",
    ),
    Traced(
        "transport.md",
        "| 50,000 | 104.1 s | 1145 MiB |",
        ("104.1", "1145"),
        "benchmarks/results/transport_unrelated-large.md",
    ),
    Traced(
        "perturbation.md",
        "| $\\sigma_{\\min}(F_{k,k})$, Theorem 4.2 | 0.9940540 | 0.9970270 |",
        ("0.9940540", "0.9970270"),
        "docs/figures/perturbation_numbers.txt",
    ),
    Traced(
        "perturbation.md",
        "| $\\sigma_{\\min}(F_{k,k})$, exact Jacobian | 0.9940891 | 0.9970358 |",
        ("0.9940891", "0.9970358"),
        "docs/figures/perturbation_numbers.txt",
    ),
    Traced(
        "perturbation.md",
        "| $\\sigma_{\\max}(F_{k,\\tilde k})$, Theorem 4.2 | 0.0015910 | 0.0007955 |",
        ("0.0015910", "0.0007955"),
        "docs/figures/perturbation_numbers.txt",
    ),
    Traced(
        "perturbation.md",
        "| $\\sigma_{\\max}(F_{k,\\tilde k})$, exact Jacobian | 0.0015860 | 0.0007943 |",
        ("0.0015860", "0.0007943"),
        "docs/figures/perturbation_numbers.txt",
    ),
    Traced(
        "perturbation.md",
        "shrink by a factor of 4.0 when",
        ("4.0",),
        "docs/figures/perturbation_numbers.txt",
    ),
    Traced(
        "perturbation.md",
        "block is below $10^{-18}$",
        ("10^{-18}",),
        "docs/figures/make_perturbation_numbers.py",
    ),
    Traced(
        "square_loss.md",
        "at most 0.004 rad per epoch over the last 10 epochs with BN",
        ("0.004",),
        "docs/figures/square_loss_seeds.txt",
    ),
    Traced(
        "square_loss.md",
        "it falls to 0.016 rad per epoch soon after interpolation (epoch 15)",
        ("0.016", "15"),
        "docs/figures/square_loss_seeds.txt",
    ),
    Traced(
        "square_loss.md",
        "0.039 to 0.15 rad per epoch over epochs 51–150",
        ("0.039", "0.15", "51", "150"),
        "docs/figures/square_loss_seeds.txt",
    ),
    Traced(
        "square_loss.md",
        "went the wrong way in 2 of the 5 seeds (seed 1 without BN, seed 2 with BN)",
        ("2", "5", "1"),
        "docs/figures/make_square_loss_seeds.py",
    ),
    Traced(
        "square_loss.md",
        "0.93–1.0 everywhere",
        ("0.93", "1.0"),
        "docs/figures/square_loss_seeds.txt",
    ),
    Traced(
        "square_loss.md",
        "(seed 3: 0.93 against 0.97)",
        ("3", "0.93", "0.97"),
        "docs/figures/square_loss_seeds.txt",
    ),
    Traced(
        "ulpm.md",
        "Expect $\\gamma_t/\\gamma^*$ around 0.98 after $10^4$ steps and 0.99 after $10^5$",
        ("0.98", "0.99"),
        "docs/figures/ulpm_margins.txt",
    ),
    Traced(
        "networks.md",
        "at 0.41 s per epoch at batch 128 on one thread",
        ("0.41",),
        "benchmarks/results/nets.md",
    ),
    Traced(
        "networks.md",
        "times capture at 1.07 to 2.05 times a plain forward pass",
        ("1.07", "2.05"),
        "benchmarks/results/nets.md",
    ),
    Traced(
        "wd-depth.md",
        "and from 2.36 ± 0.11 to 1.68 ± 0.046 with 16 blocks",
        ("2.36", "0.11", "1.68", "0.046"),
        "docs/figures/wd_depth_digits.json",
    ),
    Traced(
        "wd-depth.md",
        "LSS 11.7 ± 0.95 at 5e-3 against the ResNet's 1.68 ± 0.046",
        ("11.7", "0.95", "1.68", "0.046"),
        "docs/figures/wd_depth_digits.json",
    ),
    Traced(
        "wd-depth.md",
        "at 16 blocks it rises from 0.955 ± 0.16 to 1 ± 0",
        ("0.955", "0.16"),
        "docs/figures/wd_depth_digits.json",
    ),
    Traced(
        "wd-depth.md",
        "0.363 ± 0.072 to 0.504 ± 0.21, τ = 1",
        ("0.363", "0.072", "0.504", "0.21"),
        "docs/figures/wd_depth_mnist1d.json",
    ),
    Traced(
        "wd-depth.md",
        "(-2.64 ± 0.55 to -3.8 ± 1.1)",
        ("-2.64", "0.55", "-3.8", "1.1"),
        "docs/figures/wd_depth_mnist1d.json",
    ),
    Traced(
        "wd-depth.md",
        "(0.0546 ± 0.014 with 4 blocks",
        ("0.0546", "0.014"),
        "docs/figures/wd_depth_mnist1d.json",
    ),
    Traced(
        "wd-depth.md",
        "| 789.08 s + 25.08 s | 644016 KiB |",
        ("644016",),
        "docs/figures/wd_depth_time.txt",
    ),
    Traced(
        "wd-depth.md",
        "| 1623.18 s + 38.08 s | 693784 KiB |",
        ("693784",),
        "docs/figures/wd_depth_time.txt",
    ),
    Traced(
        "getting-started.md",
        "the default run took 186.8 s (3 min 7 s), `--quick` 40.8 s",
        ("186.8", "3", "7", "40.8"),
        PIPELINE_MD,
    ),
    Traced(
        "getting-started.md",
        "for the ResNet, OTS 1.000, mean LSS 1.61, path ratio 1.60",
        ("1.000", "1.61", "1.60"),
        PIPELINE,
    ),
    Traced(
        "getting-started.md",
        "NC1 falling at every layer from 0.35 to 0.14",
        ("0.35", "0.14"),
        PIPELINE,
    ),
    Traced(
        "getting-started.md",
        "for the plain twin OTS 0.000, mean LSS 4.90 and path ratio 4.17",
        ("0.000", "4.90", "4.17"),
        PIPELINE,
    ),
    Traced(
        "getting-started.md",
        "path ratio from 2.437 to 1.602 (effect +0.834, interval [+0.828, +0.844], floor 0.009) "
        "and LSS from 2.433 to 1.608",
        ("2.437", "1.602", "+0.834", "+0.828", "+0.844", "0.009", "2.433", "1.608"),
        PIPELINE,
    ),
    Traced("getting-started.md", "in 1 min 52 s on the same 2 cores", ("1", "52"), PIPELINE_MD),
    Traced(
        "networks.md",
        "the `--quick` run took **112.1 s** (1 min 52 s) in all, with 948 MiB of peak memory",
        ("112.1", "1", "52", "948"),
        PIPELINE_MD,
    ),
    Traced(
        "networks.md",
        "training both networks 64.5 s, ten captures 9.5 s, the analyses 9.1 s, the MUFM 18.4 s",
        ("64.5", "9.5", "9.1", "18.4"),
        PIPELINE_MD,
    ),
    Traced(
        "networks.md",
        "one SGD step of a batch of 128 took 2.57 s and an evaluation pass of 128 images 0.63 s, "
        "so training the two networks alone would take about 3.8 hours",
        ("2.57", "0.63", "3.8"),
        PIPELINE_MD,
    ),
    Traced(
        "networks.md",
        "ResNet OTS 0.047, mean LSS 1.16, path ratio 1.19; plain twin OTS 0.003, LSS 1.96, path "
        "ratio 1.58",
        ("0.047", "1.16", "1.19", "0.003", "1.96", "1.58"),
        PIPELINE,
    ),
    Traced("networks.md", "to 1.77 at the last block", ("1.77",), PIPELINE),
    Traced("networks.md", "at training accuracies 0.84 and 0.77", ("0.84", "0.77"), PIPELINE),
    Traced(
        "networks.md",
        "λ_OT = 0.071, its NC1 matching the network's 1.02",
        ("0.071", "1.02"),
        PIPELINE,
    ),
    Traced(
        "mufm.md",
        "the fit gave λ_OT = 1.35e-4 and λ_H = 1.80e-4 (λ_W = 5e-4), J = 0.255 (a typical factor "
        "$e^{0.146}$",
        ("1.35e-4", "1.80e-4", "5e-4", "0.255", "0.146"),
        PIPELINE,
    ),
    Traced(
        "mufm.md",
        "no step within the spread (0 of 6) and a last layer of spread 2.26 against the "
        "network's 15.7 ($W_2$ relative 0.931)",
        ("0", "6", "2.26", "15.7", "0.931"),
        PIPELINE_MD,
    ),
    Traced(
        "mufm.md",
        "λ_OT = 1.2e-3, λ_H = 1.3e-3, J = 0.101 and a spread of 1.92 against 11.2",
        ("1.2e-3", "1.3e-3", "0.101", "1.92", "11.2"),
        PIPELINE,
    ),
    Traced(
        "mufm.md",
        "(λ_OT = 1.14e-3, λ_H = 1.24e-3, J = 0.100) and keeps the same spread, 1.92 against 11.2",
        ("1.14e-3", "1.24e-3", "0.100", "1.92", "11.2"),
        CAL,
    ),
    Traced(
        "sweeps.md",
        "5.29 times slower on two threads than on one (11.98 s against 2.27 s) and the MUFM's joint "
        "fit 6.74 times slower (43.15 s against 6.40 s)",
        ("5.29", "11.98", "2.27", "6.74", "43.15", "6.40"),
        "benchmarks/results/threads.md",
    ),
    Traced(
        "sweeps.md",
        "two threads took 0.83 and 1.12 times as long as one",
        ("0.83", "1.12"),
        "benchmarks/results/threads.md",
    ),
    Traced(
        "networks.md",
        "(Kendall τ = −0.78) for the ResNet, 1018 to 2.50 (τ = −0.94) for the plain twin",
        ("−0.78", "2.50", "−0.94"),
        PIPELINE,
    ),
    Traced("networks.md", "(W = 64: 11.2 M parameters", ("11.2",), PIPELINE_MD),
]


def _numbers_in(path: Path) -> list[float]:
    return [float(t) for t in re.findall(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", path.read_text())]


@pytest.mark.parametrize("entry", TRACED, ids=[f"{t.page}:{t.text[:30]}" for t in TRACED])
def test_numbers_of_expensive_runs_are_traceable(entry: Traced) -> None:
    page = _page_text(entry.page)
    text = " ".join(entry.text.split())
    assert text in page, f"docs/{entry.page} no longer holds {text!r}; update TRACED"
    assert all(n in text for n in entry.numbers), entry
    if entry.source.startswith("test_"):
        source = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
        assert f"def {entry.source}(" in source, f"no test {entry.source} in tests/"
        assert entry.source in page, f"docs/{entry.page} does not name {entry.source}"
        return
    path = ROOT / entry.source
    assert path.is_file(), f"{entry.source} (the source of {text!r}) does not exist"
    if path.suffix == ".py":  # the page names the script that made the numbers
        assert entry.source in page, f"docs/{entry.page} does not name {entry.source}"
        return
    results = _numbers_in(path)
    for n in entry.numbers:
        half = 0.5 * (_unit(n) or 1.0) if "." in n else 0.0
        value = float(n.replace("\u2212", "-"))  # a page's minus sign is U+2212
        assert any(abs(r - value) <= half + 1e-9 for r in results), (
            f"docs/{entry.page}: {n} (in {text!r}) is not in {entry.source} to the printed "
            "precision; rerun the benchmark and update the page, or the results file"
        )
