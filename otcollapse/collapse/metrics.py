r"""The collapse metrics of one layer: one small function per metric, registered under its name.

Conventions (the package docstring has them in full): masses $a_i$ summing to one, class masses
$p_k$, class means $m_k$, $m_G = \frac1K\sum_k m_k$, $\Sigma_W = \sum_i a_i (h_i - m_{y_i})
(h_i - m_{y_i})^\top$, $\Sigma_B = \frac1K\sum_k (m_k - m_G)(m_k - m_G)^\top$. The metrics, in the
order of :data:`METRICS`:

* ``nc1``: $\frac1K \operatorname{Tr}(\Sigma_W \Sigma_B^\dagger)$ (Papyan, Han & Donoho 2020), the
  pseudo-inverse dropping eigenvalues of $\Sigma_B$ at or below ``rtol`` times the largest;
* ``he_su_d``: $D = \operatorname{Tr}(\Sigma_W \Sigma_B^\dagger) = K\cdot\mathrm{NC1}$ (He & Su 2023);
* ``nc1_tilde``: $\operatorname{Tr}\Sigma_W / \operatorname{Tr}\Sigma_B$ (Tirer et al. 2023);
* ``cdnv``: mean over class pairs of $(V_k + V_{k'}) / (2\lVert m_k - m_{k'}\rVert^2)$ with
  $V_k = \frac1{p_k}\sum_{y_i=k} a_i \lVert h_i - m_k\rVert^2$ (Galanti et al. 2022);
* ``nc2_equinorm``, ``nc2_equiangularity``, ``nc2_etf_distance`` (Papyan et al. 2020);
* ``nc3``: self-duality with the classifier; ``nc4_ncc_error`` and ``nc4_mismatch``
  (nearest-class-centre error and its disagreement with the classifier or logits);
* ``tr_sigma_w``, ``tr_sigma_b`` and ``w2sq_to_class_means``, the OT view of NC1:
  $W_2^2(\mu, \sum_k p_k \delta_{m_k}) \le \operatorname{Tr}\Sigma_W$.

Each metric is a function of a :class:`_Layer` (the layer's class statistics, its second-pass
products computed once on first use, and its notes) registered with :func:`_metric`, which also
records what the metric needs: a covariance (every class with two samples), products of the
second pass over the samples, the classifier. :func:`layer_collapse` runs the requested ones
(a :class:`_Request`) through :func:`_compute`.

References
----------
Papyan, Han & Donoho, "Prevalence of neural collapse during the terminal phase of deep learning
training", PNAS 2020. Tirer, Huang & Niles-Weed, "Perturbation analysis of neural collapse", ICML
2023. Galanti, György & Hutter, "On the role of neural collapse in transfer learning", ICLR 2022.
He & Su, "A law of data separation in deep learning", PNAS 2023. Wang, Gai & Zhang, "Progressive
Feedforward Collapse of ResNet Training".
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

from otcollapse._results import Result
from otcollapse._utils import ArrayLike
from otcollapse.collapse.statistics import (
    DEFAULT_RTOL,
    Head,
    _block_size,
    _check_head,
    _check_rtol,
    _Pass2,
    _pass2,
    _prepare,
    _statistics,
)
from otcollapse.transport import wasserstein

__all__ = ["COLLAPSE_ULPS", "METRICS", "LayerCollapse", "layer_collapse"]

#: Tr Sigma_W <= (COLLAPSE_ULPS * eps)^2 * sum_k p_k ||m_k||^2 is rounding noise: set to exactly 0
COLLAPSE_ULPS = 64.0

_F = TypeVar("_F", bound=Callable[..., Any])


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Metric:
    """A registered metric: its function and what it needs."""

    #: the value on a layer; None when the metric does not apply there (no classifier)
    compute: Callable[[_Layer], float | None]
    #: uses the within-class scatter as a covariance estimate: every class needs two samples
    covariance: bool
    #: products of the second pass it reads ("scatter", "ncc", "head", "coords")
    scan: tuple[str, ...]
    #: needs the network's classifier or logits (in a profile: the last layer only)
    head: bool


_REGISTRY: dict[str, _Metric] = {}


def _metric(
    name: str, *, covariance: bool = False, scan: tuple[str, ...] = (), head: bool = False
) -> Callable[[_F], _F]:
    """Register the decorated function as the metric ``name`` (its place in :data:`METRICS` is the
    order of registration)."""

    def register(fn: _F) -> _F:
        _REGISTRY[name] = _Metric(fn, covariance, scan, head)
        return fn

    return register


def _where(name: str) -> str:
    return f"layer {name!r}: " if name else ""


@dataclasses.dataclass(frozen=True)
class _Request:
    """What to compute on one layer: the metrics (in table order) and their settings."""

    metrics: tuple[str, ...]
    rtol: float
    block: int  # rows per block
    name: str = ""
    head: Head | None = None  # the classifier (W, b)
    logits: np.ndarray | None = None


class _Layer:
    """One layer as the metric functions see it.

    ``st`` holds the class statistics (within-class scatter set to exactly zero when it is at
    rounding level, ``collapsed``), ``coords`` / ``norms`` the centred class means in the basis of
    ``st``, ``scan`` the products of the second pass (run once, on first use, for every requested
    metric at once). A metric that is undefined here records why in ``notes``; ``cdnv_matrix`` and
    ``transport`` are filled by the metrics that compute them.
    """

    def __init__(
        self, x: Any, classes: np.ndarray, idx: np.ndarray, a: np.ndarray, request: _Request
    ) -> None:
        self.x, self.classes, self.idx, self.a, self.request = x, classes, idx, a, request
        self.K = int(classes.shape[0])
        st = _statistics(x, classes, idx, a, request.block)
        # within-class scatter at rounding level (every sample on its class mean up to a few ulps)
        scale = float(st.masses @ np.einsum("kd,kd->k", st.means, st.means))
        self.collapsed = bool(
            st.tr_sigma_w <= (COLLAPSE_ULPS * np.finfo(np.float64).eps) ** 2 * scale
        )
        self.st = dataclasses.replace(st, within_ss=np.zeros(self.K)) if self.collapsed else st
        self.coords = self.st.mean_coords  # (K, r)
        self.norms = np.sqrt(np.einsum("kr,kr->k", self.coords, self.coords))
        self.keep = self.st.kept(request.rtol)
        self.notes: dict[str, str] = {}
        self.cdnv_matrix: np.ndarray | None = None
        self.transport: dict[str, Any] | None = None

    @functools.cached_property
    def scan(self) -> _Pass2:
        needs = {s for m in self.request.metrics for s in _REGISTRY[m].scan}
        p2 = _pass2(
            self.x,
            self.idx,
            self.a,
            self.st.means,
            self.st.basis,
            self.request.block,
            ncc="ncc" in needs,
            head=self.request.head if "head" in needs else None,
            keep_coords="coords" in needs and not self.collapsed,
        )
        if self.collapsed:
            p2 = dataclasses.replace(p2, within_proj=np.zeros_like(p2.within_proj))
        return p2

    def undefined(self, metric: str, why: str) -> float:
        """NaN, with the reason noted."""
        self.notes[metric] = why
        return math.nan


# ---------------------------------------------------------------------------------------------
# the metrics, in table order
# ---------------------------------------------------------------------------------------------
def _fuzziness(layer: _Layer, metric: str) -> float:
    r"""$\operatorname{Tr}(\Sigma_W\Sigma_B^\dagger) = \sum_{j\ \rm kept}(U^\top\Sigma_W U)_{jj}
    / \lambda_j$ ($\Sigma_B = U\operatorname{diag}(\lambda)U^\top$)."""
    if not layer.keep.any():
        why = "all class means coincide (Sigma_B = 0), so Tr(Sigma_W Sigma_B^+) is undefined"
        return layer.undefined(metric, why)
    wp = np.diag(layer.scan.within_proj)[layer.keep]
    return float(np.sum(wp / layer.st.between_eigvals[layer.keep]))


@_metric("nc1", covariance=True, scan=("scatter",))
def _nc1(layer: _Layer) -> float:
    return _fuzziness(layer, "nc1") / layer.K


@_metric("he_su_d", covariance=True, scan=("scatter",))
def _he_su_d(layer: _Layer) -> float:
    return _fuzziness(layer, "he_su_d")


@_metric("nc1_tilde", covariance=True)
def _nc1_tilde(layer: _Layer) -> float:
    tb = layer.st.tr_sigma_b
    if not tb > 0:
        return layer.undefined("nc1_tilde", "all class means coincide (Tr Sigma_B = 0)")
    return layer.st.tr_sigma_w / tb


@_metric("cdnv", covariance=True)
def _cdnv(layer: _Layer) -> float:
    K, coords, var = layer.K, layer.coords, layer.st.class_variances
    mat = np.full((K, K), math.nan)  # a class is not paired with itself: NaN diagonal
    zero_pairs = []
    for k in range(K):
        diff = coords - coords[k]
        dist2 = np.einsum("kr,kr->k", diff, diff)
        ok = dist2 > 0
        ok[k] = False
        mat[k, ok] = (var[k] + var[ok]) / (2.0 * dist2[ok])
        zero_pairs += [
            (layer.classes[k].item(), layer.classes[j].item()) for j in range(k + 1, K) if not ok[j]
        ]
    layer.cdnv_matrix = mat
    if zero_pairs:
        why = f"classes {zero_pairs[:5]} have identical means (zero distance)"
        return layer.undefined("cdnv", why)
    return float(mat[np.triu_indices(K, 1)].mean())


@_metric("nc2_equinorm")
def _nc2_equinorm(layer: _Layer) -> float:
    norms = layer.norms
    if not norms.mean() > 0:
        return layer.undefined("nc2_equinorm", "all class means coincide with the global mean")
    return float(norms.std() / norms.mean())


@_metric("nc2_equiangularity")
def _nc2_equiangularity(layer: _Layer) -> float:
    norms = layer.norms
    if not (norms > 0).all():
        zero = layer.classes[norms == 0].tolist()
        why = f"the centred means of classes {zero[:5]} are zero: their angle is undefined"
        return layer.undefined("nc2_equiangularity", why)
    cos = (layer.coords @ layer.coords.T) / np.outer(norms, norms)
    iu = np.triu_indices(layer.K, 1)
    return float(np.mean(np.abs(cos[iu] + 1.0 / (layer.K - 1))))


@_metric("nc2_etf_distance")
def _nc2_etf_distance(layer: _Layer) -> float:
    G = layer.coords @ layer.coords.T
    gn = float(np.linalg.norm(G))
    if not gn > 0:
        return layer.undefined("nc2_etf_distance", "all class means coincide (Gram matrix is zero)")
    P = np.eye(layer.K) - 1.0 / layer.K
    return float(np.linalg.norm(G / gn - P / math.sqrt(layer.K - 1)))


@_metric("nc3", head=True)
def _nc3(layer: _Layer) -> float | None:
    if layer.request.head is None:
        return None
    W = layer.request.head[0]
    missing = sorted(set(range(W.shape[0])) - set(layer.classes.tolist()))
    if missing:
        why = (
            f"classes {missing[:10]} of the classifier have no samples, so their means (the "
            "columns of M) are unknown"
        )
        return layer.undefined("nc3", why)
    M = layer.st.centred_means.T  # (d, K), columns in classifier-row order (none is missing)
    wn, mn = float(np.linalg.norm(W)), float(np.linalg.norm(M))
    if wn == 0 or mn == 0:
        return layer.undefined("nc3", "the classifier or the centred class means are zero")
    return float(np.sum((W.T / wn - M / mn) ** 2))


@_metric("nc4_ncc_error", scan=("ncc",))
def _nc4_ncc_error(layer: _Layer) -> float:
    return float(layer.a @ (layer.scan.ncc_pred != layer.idx))


@_metric("nc4_mismatch", scan=("ncc", "head"), head=True)
def _nc4_mismatch(layer: _Layer) -> float | None:
    if layer.request.head is not None:
        pred = layer.scan.head_pred
    elif layer.request.logits is not None:
        pred = np.argmax(layer.request.logits, axis=1)
    else:
        return None
    return float(layer.a @ (layer.classes[layer.scan.ncc_pred] != pred))


@_metric("tr_sigma_w", covariance=True)
def _tr_sigma_w(layer: _Layer) -> float:
    return layer.st.tr_sigma_w


@_metric("tr_sigma_b")
def _tr_sigma_b(layer: _Layer) -> float:
    return layer.st.tr_sigma_b


@_metric("w2sq_to_class_means", covariance=True, scan=("coords",))
def _w2sq_to_class_means(layer: _Layer) -> float:
    if layer.collapsed:
        return 0.0
    pos = layer.a > 0
    res = wasserstein(
        layer.scan.coords[pos],
        layer.coords,
        a=layer.a[pos] / layer.a[pos].sum(),
        b=layer.st.masses,
        method="exact",
    )
    layer.transport = {"method": res.method, "converged": bool(res.converged), "gap": res.gap}
    if not res.converged:
        warnings.warn(
            f"{_where(layer.request.name)}the exact transport solver for w2sq_to_class_means did not "
            f"converge (gap {res.gap:.3g}); the value is an upper bound.",
            stacklevel=4,  # the caller of layer_collapse / collapse_profile
        )
    # the own-mean coupling is feasible: W2^2 <= Tr Sigma_W also after rounding
    return min(layer.scan.resid_ss + res.cost, layer.st.tr_sigma_w)


#: every metric a layer row can hold, in table order
METRICS: tuple[str, ...] = tuple(_REGISTRY)


# ---------------------------------------------------------------------------------------------
# one layer
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class LayerCollapse(Result):
    r"""Collapse metrics of one layer.

    Attributes
    ----------
    name : str
    n_samples, n_classes, dim : int
    metrics : dict str -> float
        The computed metrics (names from :data:`METRICS`); a metric that does not apply here (no
        classifier) is absent; one that is undefined on this layer is NaN and explained in
        ``notes``.
    notes : dict str -> str
        Why a metric is NaN.
    cdnv_matrix : ndarray, shape (K, K), or None
        Pairwise CDNV; the diagonal is NaN (a class is not paired with itself).
    classes : ndarray of int, shape (K,)
    class_counts : ndarray of int, shape (K,)
    rank_between : int
        Eigenvalues of $\Sigma_B$ kept by the pseudo-inverse (at most ``K - 1``).
    rtol : float
        The pseudo-inverse cutoff used.
    collapsed : bool
        The within-class scatter was at rounding level,
        $\operatorname{Tr}\Sigma_W \le (c\,\varepsilon)^2 \sum_k p_k\lVert m_k\rVert^2$ with
        $c$ = :data:`COLLAPSE_ULPS` and $\varepsilon$ the float64 machine epsilon, and was set to
        exactly 0 (so NC1 = D = CDNV = 0 and the layer is left out of the decay fit of D).
    transport : dict or None
        What solved ``w2sq_to_class_means``: ``method``, ``converged`` and the duality ``gap``
        (a ``UserWarning`` is issued when it did not converge).
    """

    name: str
    n_samples: int
    n_classes: int
    dim: int
    metrics: dict[str, float]
    notes: dict[str, str]
    cdnv_matrix: np.ndarray | None
    classes: np.ndarray
    class_counts: np.ndarray
    rank_between: int
    rtol: float
    collapsed: bool = False
    transport: dict[str, Any] | None = None

    def __getitem__(self, metric: str) -> float:
        return self.metrics[metric]


def _check_metrics(metrics: Sequence[str] | str | None) -> tuple[str, ...]:
    if metrics is None:
        return METRICS
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, Iterable):
        raise TypeError(
            f"metrics must be a metric name or a list of names from {list(METRICS)}; got "
            f"{metrics!r}."
        )
    metrics = list(metrics)
    unknown = [m for m in metrics if not isinstance(m, str) or m not in METRICS]
    if unknown:
        raise ValueError(f"unknown collapse metric(s) {unknown}; valid names: {list(METRICS)}.")
    if not metrics:
        raise ValueError(f"metrics is empty; choose some of {list(METRICS)}.")
    return tuple(m for m in METRICS if m in metrics)


def _head_metrics(metrics: tuple[str, ...]) -> list[str]:
    """The metrics among ``metrics`` that need the classifier (or logits)."""
    return [m for m in metrics if _REGISTRY[m].head]


def _check_class_sizes(
    classes: np.ndarray, counts: np.ndarray, metrics: tuple[str, ...], name: str
) -> None:
    covariance = sorted(m for m in metrics if _REGISTRY[m].covariance)
    few = counts < 2
    if covariance and few.any():
        raise ValueError(
            f"{_where(name)}class(es) {classes[few].tolist()} have fewer than two samples "
            f"({counts[few].tolist()}); the within-class metrics {covariance} need a covariance, "
            "so every class needs at least two. Drop or merge those classes, collect more "
            "samples, or pass metrics= without them."
        )


def _compute(
    x: Any, classes: np.ndarray, idx: np.ndarray, a: np.ndarray, request: _Request
) -> LayerCollapse:
    """The requested metrics of one prepared layer (``a``: masses summing to one)."""
    counts = np.bincount(idx[a > 0], minlength=classes.shape[0])
    _check_class_sizes(classes, counts, request.metrics, request.name)
    layer = _Layer(x, classes, idx, a, request)
    values: dict[str, float] = {}
    for m in request.metrics:  # a loop, not a comprehension: warnings' stacklevel counts frames
        v = _REGISTRY[m].compute(layer)
        if v is not None:  # None: the metric does not apply here
            values[m] = v
    return LayerCollapse(
        name=request.name,
        n_samples=int(x.shape[0]),
        n_classes=layer.K,
        dim=int(x.shape[1]),
        metrics=values,
        notes=layer.notes,
        cdnv_matrix=layer.cdnv_matrix,
        classes=classes,
        class_counts=counts,
        rank_between=int(layer.keep.sum()),
        rtol=float(request.rtol),
        collapsed=layer.collapsed,
        transport=layer.transport,
    )


def layer_collapse(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    classifier: Any = None,
    logits: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    metrics: Sequence[str] | None = None,
    rtol: float = DEFAULT_RTOL,
    block_size: int | None = None,
    name: str = "",
) -> LayerCollapse:
    r"""Every collapse metric of one layer, from streamed float64 class statistics.

    With $p_k$ the class masses, $m_k$ the class means, $m_G = \frac1K\sum_k m_k$ and
    $\Sigma_W$, $\Sigma_B$ as in the module docstring, and
    $\Sigma_B = U\operatorname{diag}(\lambda)U^\top$:

    $$\mathrm{NC1} = \frac1K\operatorname{Tr}(\Sigma_W\Sigma_B^\dagger)
        = \frac1K\sum_{\lambda_j > \mathrm{rtol}\,\lambda_{\max}}
          \frac{(U^\top\Sigma_W U)_{jj}}{\lambda_j},\qquad
      D = K\cdot\mathrm{NC1},\qquad
      \widetilde{\mathrm{NC1}} = \frac{\operatorname{Tr}\Sigma_W}{\operatorname{Tr}\Sigma_B},$$

    $$\mathrm{CDNV} = \binom K2^{-1}\sum_{k<k'}\frac{V_k + V_{k'}}{2\lVert m_k - m_{k'}\rVert^2},
      \qquad V_k = \frac1{p_k}\sum_{y_i=k}a_i\lVert h_i - m_k\rVert^2,$$

    $$\mathrm{NC2}_{\rm norm} = \frac{\operatorname{std}_k\lVert m_k - m_G\rVert}
        {\operatorname{mean}_k\lVert m_k - m_G\rVert},\quad
      \mathrm{NC2}_{\rm angle} = \operatorname{mean}_{k<k'}\Big|\cos\angle(m_k - m_G,
        m_{k'} - m_G) + \tfrac1{K-1}\Big|,\quad
      \mathrm{NC2}_{\rm ETF} = \Big\lVert\frac{G}{\lVert G\rVert_F}
        - \frac{P_K}{\sqrt{K-1}}\Big\rVert_F,$$

    with $G_{kk'} = (m_k - m_G)^\top(m_{k'} - m_G)$, $P_K = I - \mathbf 1\mathbf 1^\top/K$ and
    ``std`` the population standard deviation;

    $$\mathrm{NC3} = \Big\lVert\frac{W^\top}{\lVert W\rVert_F} - \frac{M}{\lVert M\rVert_F}
        \Big\rVert_F^2,\qquad M = [m_1 - m_G, \dots, m_K - m_G]\in\mathbb R^{d\times K},$$

    ``nc4_ncc_error`` $= \sum_i a_i\,[\arg\min_k\lVert h_i - m_k\rVert \ne y_i]$ and
    ``nc4_mismatch`` $= \sum_i a_i\,[\arg\min_k\lVert h_i - m_k\rVert \ne \arg\max_k (Wh_i + b)_k]$
    (or the argmax of ``logits``); the OT view

    $$W_2^2\Big(\sum_i a_i\delta_{h_i}, \sum_k p_k\delta_{m_k}\Big) \le \operatorname{Tr}\Sigma_W,$$

    solved exactly (network simplex) on the ``min(K, d)``-dimensional coordinates in the span of
    the centred means plus the constant orthogonal part, which equals the problem in
    $\mathbb R^d$ (``otcollapse.transport.wasserstein(..., method="exact")``), clipped at
    $\operatorname{Tr}\Sigma_W$ against rounding.

    Parameters
    ----------
    features : array-like, memmap or Tensor, shape (n, d)
        The layer's samples, one per row (read in row blocks and converted to float64).
    labels : array-like of int, shape (n,)
        Class labels; with a classifier they must be row indices ``0..K-1`` of ``W``.
    classifier : ndarray (K, d) or pair (W, b), optional
        The linear classifier on these features; enables ``nc3`` and ``nc4_mismatch``.
    logits : array-like, shape (n, K), optional
        Used for ``nc4_mismatch`` when no classifier is given.
    weights : array-like, shape (n,), optional
        Sample masses $a_i$: finite, non-negative and summing to one (within 1e-6, the one
        weight rule of otcollapse; pass ``w / w.sum()``); uniform ``1/n`` when omitted.
    metrics : sequence of str, optional
        Names from :data:`METRICS` (default all). ``w2sq_to_class_means`` solves an ``n x K``
        exact transport problem; leave it out for very large ``n``.
    rtol : float
        Pseudo-inverse cutoff: eigenvalues of $\Sigma_B$ at or below ``rtol`` times the largest
        are treated as zero (default :data:`DEFAULT_RTOL` = 1e-10).
    block_size : int, optional
        Rows read per block (default ``otcollapse._utils.SCAN_ROWS``, fewer for wide layers: at
        most about 64 MiB of float64 per block).
    name : str
        Layer name, used in messages and results.

    Returns
    -------
    LayerCollapse

    Raises
    ------
    ValueError
        Fewer than two classes; a class with fewer than two samples when a within-class metric is
        requested; NaN/inf features; weights that break the weight rule; labels outside the
        classifier's (or logits') classes; misshapen inputs; ``nc3``/``nc4_mismatch`` requested
        explicitly without a classifier.

    Examples
    --------
    >>> from otcollapse.constructions import etf_clusters
    >>> X, y = etf_clusters(4, 6, r=3.0, sigma=0.5)
    >>> res = layer_collapse(X, y)
    >>> round(res["nc1"], 12), round(res["he_su_d"], 12), round(res["cdnv"], 12)
    (0.0625, 0.25, 0.0625)

    References
    ----------
    Papyan, Han & Donoho, PNAS 2020 (NC1-NC4); Tirer, Huang & Niles-Weed, ICML 2023 (NC1 tilde);
    Galanti, György & Hutter, ICLR 2022 (CDNV); He & Su, PNAS 2023 (D).
    """
    x, raw, classes, idx, a = _prepare(features, labels, weights)
    chosen = _check_metrics(metrics)
    rtol = _check_rtol(rtol)
    n, d = int(x.shape[0]), int(x.shape[1])
    head, lg = _check_head(raw, d, n, classifier, logits)
    if metrics is not None:
        if "nc3" in chosen and head is None:
            raise ValueError("nc3 needs the classifier W: pass classifier=W or (W, b).")
        if "nc4_mismatch" in chosen and head is None and lg is None:
            raise ValueError("nc4_mismatch needs a classifier (W, b) or logits.")
    request = _Request(chosen, rtol, _block_size(block_size, d), name, head, lg)
    return _compute(x, classes, idx, a, request)
