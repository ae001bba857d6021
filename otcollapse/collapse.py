r"""Neural-collapse metrics per layer and progressive-feedforward-collapse (PFC) statistics.

One convention for every metric (DESIGN.md, section 1). Samples ``h_i`` with labels ``y_i`` and
masses ``a_i`` (``a_i = 1/N`` unless weights are given); class masses ``p_k = sum_{y_i=k} a_i``
(``n_k/N`` when uniform); class means ``m_k``; the global mean is the *unweighted* mean of the class
means,

$$m_G = \frac1K \sum_{k=1}^K m_k,\qquad
  \Sigma_W = \sum_i a_i\,(h_i - m_{y_i})(h_i - m_{y_i})^\top,\qquad
  \Sigma_B = \frac1K \sum_{k=1}^K (m_k - m_G)(m_k - m_G)^\top .$$

With uniform masses ``Sigma_W = (1/N) sum_i (h_i - m_{y_i})(h_i - m_{y_i})^T``. The metrics:

* ``nc1``: $\mathrm{NC1} = \frac1K \operatorname{Tr}(\Sigma_W \Sigma_B^\dagger)$ (Papyan, Han &
  Donoho 2020), with the pseudo-inverse cutoff ``rtol`` (eigenvalues of $\Sigma_B$ at or below
  ``rtol * max eigenvalue`` count as zero; default :data:`DEFAULT_RTOL`);
* ``he_su_d``: $D = \operatorname{Tr}(\Sigma_W \Sigma_B^\dagger) = K\cdot\mathrm{NC1}$
  (He & Su 2023);
* ``nc1_tilde``: $\widetilde{\mathrm{NC1}} = \operatorname{Tr}\Sigma_W / \operatorname{Tr}\Sigma_B$
  (Tirer et al. 2023);
* ``cdnv``: mean over class pairs of $(V_k + V_{k'}) / (2\lVert m_k - m_{k'}\rVert^2)$ with
  $V_k = \frac1{p_k}\sum_{y_i=k} a_i \lVert h_i - m_k\rVert^2$ (Galanti et al. 2022);
* ``nc2_equinorm``, ``nc2_equiangularity``, ``nc2_etf_distance``; ``nc3`` (self-duality, needs a
  classifier); ``nc4_ncc_error`` and ``nc4_mismatch`` (needs a classifier or logits);
* ``tr_sigma_w``, ``tr_sigma_b`` and ``w2sq_to_class_means``, the OT view of NC1:
  $W_2^2(\mu, \sum_k p_k \delta_{m_k}) \le \operatorname{Tr}\Sigma_W$.

Class statistics are streamed over row blocks in float64 (two passes; a memory map is never read
whole) and no ``d x d`` matrix is ever formed: $\Sigma_B$ lives in the span of the centred class
means, so $\operatorname{Tr}(\Sigma_W\Sigma_B^\dagger)$ needs only the ``min(K, d)``-dimensional
projection of $\Sigma_W$ onto that span.

Sample weights are supported throughout (the masses ``a_i`` above). Plain per-metric functions
(:func:`nc1`, :func:`cdnv`, ...) raise a ValueError when their metric is undefined on the input;
:func:`layer_collapse` and :func:`collapse_profile` instead report an undefined metric as NaN and
say why in ``notes``. Within-class scatter at rounding level (every sample on its class mean up to
a few ulps, see :data:`COLLAPSE_ULPS`) is set to exactly zero and flagged ``collapsed``.

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
import math
import sys
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats
from tqdm import tqdm

from otcollapse import _utils
from otcollapse._utils import (
    ArrayLike,
    check_not_complex,
    iter_rows,
    json_safe,
    to_numpy,
)
from otcollapse._validation import check_int, check_labels, check_real
from otcollapse.measures import Trajectory
from otcollapse.transport import wasserstein

__all__ = [
    "COLLAPSE_ULPS",
    "DEFAULT_RTOL",
    "METRICS",
    "MONOTONE_RTOL",
    "ClassStatistics",
    "CollapseProfile",
    "DecayFit",
    "LayerCollapse",
    "PFCStatistic",
    "cdnv",
    "cdnv_matrix",
    "class_statistics",
    "collapse_profile",
    "layer_collapse",
    "nc1",
    "nc1_tilde",
    "nc2",
    "nc3",
    "nc4",
    "separation_fuzziness",
    "w2sq_to_class_means",
]

#: relative eigenvalue cutoff of the pseudo-inverse of Sigma_B: eigenvalues <= rtol * max count as 0
DEFAULT_RTOL = 1e-10
#: Tr Sigma_W <= (COLLAPSE_ULPS * eps)^2 * sum_k p_k ||m_k||^2 is rounding noise: set to exactly 0
COLLAPSE_ULPS = 64.0
#: a step counts as non-increasing when v[l+1] <= v[l] + MONOTONE_RTOL * max(|v[l]|, |v[l+1]|)
MONOTONE_RTOL = 1e-10

#: default cap on the bytes of one float64 block of rows (wide layers get fewer rows per block)
_BLOCK_BYTES = 64 * 2**20

#: every metric a layer row can hold, in table order
METRICS: tuple[str, ...] = (
    "nc1",
    "he_su_d",
    "nc1_tilde",
    "cdnv",
    "nc2_equinorm",
    "nc2_equiangularity",
    "nc2_etf_distance",
    "nc3",
    "nc4_ncc_error",
    "nc4_mismatch",
    "tr_sigma_w",
    "tr_sigma_b",
    "w2sq_to_class_means",
)
# metrics that use within-class scatter as a covariance estimate: every class needs two samples
_WITHIN = frozenset({"nc1", "he_su_d", "nc1_tilde", "cdnv", "tr_sigma_w", "w2sq_to_class_means"})
# metrics that need the second pass over the samples
_PASS2 = frozenset({"nc1", "he_su_d", "nc4_ncc_error", "nc4_mismatch", "w2sq_to_class_means"})
# metrics that need the network's classifier (or logits): last layer only
_HEAD = frozenset({"nc3", "nc4_mismatch"})


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def _check_features(features: ArrayLike) -> Any:
    x = features
    if not hasattr(x, "shape") or not hasattr(x, "__getitem__"):
        x = to_numpy(x, dtype=np.float64, what="features")
    check_not_complex(x, "features")
    if len(x.shape) != 2:
        raise ValueError(
            f"features have shape {tuple(x.shape)}; give a 2-D array (n_samples, n_features) "
            "(flatten or pool feature maps first, e.g. x.reshape(n, -1))."
        )
    if int(x.shape[0]) == 0 or int(x.shape[1]) == 0:
        raise ValueError(
            f"features are empty (shape {tuple(x.shape)}); collapse metrics need data."
        )
    return x


def _check_weights(weights: ArrayLike | None, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = to_numpy(weights, dtype=np.float64, what="weights").reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"weights have length {w.shape[0]} but the features have {n} samples.")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"weights contain {int((~np.isfinite(w)).sum())} NaN/inf values.")
    if np.any(w < 0):
        raise ValueError(f"weights must be non-negative; {int((w < 0).sum())} are negative.")
    if not w.sum() > 0:
        raise ValueError("weights sum to zero; at least one sample needs positive weight.")
    return w


def _check_classifier(classifier: Any, d: int) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(classifier, tuple | list):
        if len(classifier) != 2:
            raise ValueError("classifier must be W of shape (K, d) or a pair (W, b).")
        W, b = classifier
    else:
        W, b = classifier, None
    W = to_numpy(W, dtype=np.float64, what="classifier W")
    if W.ndim != 2 or W.shape[1] != d:
        raise ValueError(
            f"classifier W has shape {W.shape}; it must be (K, d) with d = {d}, the dimension of "
            "the features it classifies (the last layer)."
        )
    if not np.all(np.isfinite(W)):
        raise ValueError("classifier W contains NaN or inf values.")
    if b is not None:
        b = to_numpy(b, dtype=np.float64, what="classifier bias").reshape(-1)
        if b.shape[0] != W.shape[0]:
            raise ValueError(f"classifier bias has length {b.shape[0]}; W has {W.shape[0]} rows.")
        if not np.all(np.isfinite(b)):
            raise ValueError("classifier bias contains NaN or inf values.")
    return W, b


def _check_label_range(labels: np.ndarray, n_out: int, what: str) -> None:
    bad = (labels < 0) | (labels >= n_out)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} labels lie outside 0..{n_out - 1}, the classes of the {what} "
            f"(found labels {np.unique(labels[bad])[:10].tolist()}); label class k by the index of "
            f"its row in the {what}, or drop those samples."
        )


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


def _block_size(block_size: int | None, dim: int) -> int:
    """Rows per block: the given number, else ``SCAN_ROWS`` capped at about 64 MiB of float64."""
    if block_size is None:
        return max(1, min(_utils.SCAN_ROWS, _BLOCK_BYTES // (8 * dim)))
    return check_int(block_size, "block_size (rows per block)", minimum=1)


def _check_rtol(rtol: float) -> float:
    return check_real(
        rtol, "rtol (the relative eigenvalue cutoff)", minimum=0.0, maximum=1.0, open_max=True
    )


# ---------------------------------------------------------------------------------------------
# streaming class statistics
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class ClassStatistics:
    r"""Class statistics of one layer, streamed in float64 (see :func:`class_statistics`).

    Attributes
    ----------
    classes : ndarray of int, shape (K,)
        The labels of the classes, sorted (classes with positive mass only).
    counts : ndarray of int, shape (K,)
        Samples of positive weight per class.
    masses : ndarray, shape (K,)
        Class masses $p_k = \sum_{y_i=k} a_i$ (sum to one; ``n_k / N`` when uniform).
    means : ndarray, shape (K, d)
        Class means $m_k$.
    within_ss : ndarray, shape (K,)
        $\sum_{y_i=k} a_i \lVert h_i - m_k\rVert^2$; their sum is $\operatorname{Tr}\Sigma_W$.
    basis : ndarray, shape (d, r), r = min(K, d)
        Orthonormal basis $U$ of a space holding every centred class mean (right singular
        vectors of the centred means), ordered by decreasing between-class eigenvalue.
    between_eigvals : ndarray, shape (r,)
        $\Sigma_B = U \operatorname{diag}(\lambda) U^\top$: the eigenvalues $\lambda$ (descending).
    within_proj : ndarray, shape (r, r), or None
        $U^\top \Sigma_W U$ (None when the second pass was not run).
    """

    classes: np.ndarray
    counts: np.ndarray
    masses: np.ndarray
    means: np.ndarray
    within_ss: np.ndarray
    basis: np.ndarray
    between_eigvals: np.ndarray
    within_proj: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return int(self.classes.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def global_mean(self) -> np.ndarray:
        """$m_G$: the unweighted mean of the class means."""
        return self.means.mean(axis=0)

    @property
    def centred_means(self) -> np.ndarray:
        """$m_k - m_G$ as rows, shape (K, d)."""
        return self.means - self.global_mean

    @property
    def mean_coords(self) -> np.ndarray:
        """Coordinates of the centred class means in :attr:`basis`, shape (K, r)."""
        return self.centred_means @ self.basis

    @property
    def class_variances(self) -> np.ndarray:
        r"""$V_k = \frac1{p_k}\sum_{y_i=k} a_i\lVert h_i - m_k\rVert^2$ (``1/n_k`` when uniform)."""
        return self.within_ss / self.masses

    @property
    def tr_sigma_w(self) -> float:
        return float(self.within_ss.sum())

    @property
    def tr_sigma_b(self) -> float:
        return float((self.centred_means**2).sum() / self.n_classes)

    def kept(self, rtol: float = DEFAULT_RTOL) -> np.ndarray:
        r"""Mask of the eigenvalues of $\Sigma_B$ kept by the pseudo-inverse (``> rtol * max``)."""
        lam = self.between_eigvals
        top = float(lam.max()) if lam.size else 0.0
        return (lam > rtol * top) & (lam > 0)


@dataclasses.dataclass(frozen=True)
class _Pass2:
    within_proj: np.ndarray
    ncc_pred: np.ndarray | None  # class index per sample
    head_pred: np.ndarray | None  # classifier row per sample
    coords: np.ndarray | None  # U^T (h_i - m_G), rows
    resid_ss: float  # sum_i a_i ||(h_i - m_G) - U U^T (h_i - m_G)||^2


def _pass1(
    x: Any, lab: np.ndarray, w: np.ndarray, K: int, block: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class masses, means and centred sums of squares, merged block by block (Chan et al.)."""
    d = int(x.shape[1])
    mass = np.zeros(K)
    mean = np.zeros((K, d))
    ss = np.zeros(K)
    n_nan = n_inf = 0
    start = 0
    for blk in iter_rows(x, block):
        b = to_numpy(blk, dtype=np.float64)
        stop = start + b.shape[0]
        lb, wb = lab[start:stop], w[start:stop]
        start = stop
        finite = np.isfinite(b)
        if not finite.all():
            n_nan += int(np.isnan(b).sum())
            n_inf += int((~finite).sum()) - int(np.isnan(b).sum())
            continue
        m_b = np.bincount(lb, weights=wb, minlength=K)
        onehot = np.zeros((b.shape[0], K))
        onehot[np.arange(b.shape[0]), lb] = wb
        present = m_b > 0
        mean_b = np.zeros((K, d))
        mean_b[present] = (onehot.T @ b)[present] / m_b[present, None]
        dev = b - mean_b[lb]
        ss_b = np.bincount(lb, weights=wb * np.einsum("ij,ij->i", dev, dev), minlength=K)
        # merge the block's centred statistics into the running ones
        tot = mass + m_b
        delta = mean_b - mean
        frac = np.divide(m_b, tot, out=np.zeros(K), where=tot > 0)
        mean[present] += delta[present] * frac[present, None]
        ss += ss_b + np.einsum("kd,kd->k", delta, delta) * mass * frac
        mass = tot
    if n_nan or n_inf:
        raise ValueError(
            f"features contain {n_nan} NaN and {n_inf} infinite values; "
            "remove or impute those samples before measuring collapse."
        )
    return mass, mean, ss


def _pass2(
    x: Any,
    lab: np.ndarray,
    w: np.ndarray,
    means: np.ndarray,
    basis: np.ndarray,
    block: int,
    *,
    ncc: bool,
    head: tuple[np.ndarray, np.ndarray | None] | None,
    keep_coords: bool,
) -> _Pass2:
    """Projected within-class scatter, nearest-centre and classifier predictions, OT coordinates."""
    r = basis.shape[1]
    coords_means = (means - means.mean(axis=0)) @ basis  # (K, r)
    cm_sq = np.einsum("kr,kr->k", coords_means, coords_means)
    within = np.zeros((r, r))
    resid = 0.0
    ncc_pred, head_pred, coords = [], [], []
    start = 0
    for blk in iter_rows(x, block):
        b = to_numpy(blk, dtype=np.float64)
        stop = start + b.shape[0]
        lb, wb = lab[start:stop], w[start:stop]
        start = stop
        dev = b - means[lb]
        p = dev @ basis  # U^T (h - m_y)
        within += (p * wb[:, None]).T @ p
        z = p + coords_means[lb]  # U^T (h - m_G): m_y - m_G lies in span U
        if ncc:
            d2 = np.einsum("ir,ir->i", z, z)[:, None] - 2.0 * z @ coords_means.T + cm_sq[None]
            ncc_pred.append(np.argmin(d2, axis=1))
        if head is not None:
            W, bias = head
            logits = b @ W.T if bias is None else b @ W.T + bias
            head_pred.append(np.argmax(logits, axis=1))
        if keep_coords:
            coords.append(z)
            res = dev - p @ basis.T  # the part of h - m_G orthogonal to span U
            resid += float(wb @ np.einsum("ij,ij->i", res, res))
    return _Pass2(
        within_proj=within,
        ncc_pred=np.concatenate(ncc_pred) if ncc else None,
        head_pred=np.concatenate(head_pred) if head is not None else None,
        coords=np.concatenate(coords) if keep_coords else None,
        resid_ss=resid,
    )


def _prepare(
    features: ArrayLike, labels: ArrayLike, weights: ArrayLike | None
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked features, raw labels, class labels, class index and raw weight per sample."""
    x = _check_features(features)
    n = int(x.shape[0])
    raw = check_labels(labels, n)
    w = _check_weights(weights, n)
    classes = np.unique(raw[w > 0])
    if classes.shape[0] < 2:
        raise ValueError(
            f"collapse metrics compare classes, so they need K >= 2 classes; the labels hold "
            f"{classes.shape[0]} class(es) with positive weight ({classes.tolist()}). Give samples "
            "of at least two classes."
        )
    idx = np.searchsorted(classes, raw)
    idx = np.clip(idx, 0, classes.shape[0] - 1)
    w = np.where(classes[idx] == raw, w, 0.0)  # zero-weight samples of absent classes
    return x, raw, classes, idx, w


def _statistics(
    x: Any, classes: np.ndarray, idx: np.ndarray, w: np.ndarray, block: int
) -> ClassStatistics:
    K = classes.shape[0]
    total = float(w.sum())
    mass, means, ss = _pass1(x, idx, w, K, block)
    centred = means - means.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    counts = np.bincount(idx[w > 0], minlength=K)
    return ClassStatistics(
        classes=classes,
        counts=counts,
        masses=mass / total,
        means=means,
        within_ss=ss / total,
        basis=vt.T.copy(),
        between_eigvals=s**2 / K,
    )


def class_statistics(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    block_size: int | None = None,
) -> ClassStatistics:
    r"""Class masses, means, within-class traces and the projected within-class scatter, streamed.

    Pass 1 merges per-block centred statistics (Chan, Golub & LeVeque's pairwise update):

    $$m \leftarrow m + \delta\,\frac{w_b}{w + w_b},\qquad
      SS \leftarrow SS + SS_b + \lVert\delta\rVert^2 \frac{w\,w_b}{w + w_b},\qquad
      \delta = m_b - m,$$

    per class. Pass 2 accumulates $U^\top \Sigma_W U$ with $U$ (d, min(K, d)) an orthonormal
    basis of the span of the centred class means, so no ``d x d`` matrix is formed. Features are
    read in blocks of ``block_size`` rows (a memory map is never read whole) and converted to
    float64.

    Parameters
    ----------
    features : array-like, memmap or Tensor, shape (n, d)
    labels : array-like of int, shape (n,)
    weights : array-like, shape (n,), optional
        Non-negative sample weights (normalised internally); uniform when omitted.
    block_size : int, optional
        Rows per block; defaults to ``otcollapse._utils.SCAN_ROWS`` rows, fewer for wide layers
        (at most about 64 MiB of float64 per block).

    Returns
    -------
    ClassStatistics

    Examples
    --------
    >>> import numpy as np
    >>> st = class_statistics(np.array([[0.0], [2.0], [3.0], [5.0]]), [0, 0, 1, 1])
    >>> st.means.ravel().tolist(), st.tr_sigma_w, st.tr_sigma_b
    ([1.0, 4.0], 1.0, 2.25)
    """
    x, _, classes, idx, w = _prepare(features, labels, weights)
    block = _block_size(block_size, int(x.shape[1]))
    st = _statistics(x, classes, idx, w, block)
    p2 = _pass2(x, idx, w, st.means, st.basis, block, ncc=False, head=None, keep_coords=False)
    return dataclasses.replace(st, within_proj=p2.within_proj / float(w.sum()))


# ---------------------------------------------------------------------------------------------
# one layer
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class LayerCollapse:
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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record (NaN becomes None)."""
        return json_safe(
            {
                "name": self.name,
                "n_samples": self.n_samples,
                "n_classes": self.n_classes,
                "dim": self.dim,
                "metrics": self.metrics,
                "notes": self.notes,
                "cdnv_matrix": self.cdnv_matrix,
                "classes": self.classes,
                "class_counts": self.class_counts,
                "rank_between": self.rank_between,
                "rtol": self.rtol,
                "collapsed": self.collapsed,
                "transport": self.transport,
            }
        )


def _compute(
    x: Any,
    raw: np.ndarray,
    classes: np.ndarray,
    idx: np.ndarray,
    w: np.ndarray,
    *,
    metrics: tuple[str, ...],
    head: tuple[np.ndarray, np.ndarray | None] | None,
    logits: np.ndarray | None,
    rtol: float,
    block: int,
    name: str,
) -> LayerCollapse:
    K = classes.shape[0]
    want = set(metrics)
    counts = np.bincount(idx[w > 0], minlength=K)
    if want & _WITHIN and (counts < 2).any():
        few = counts < 2
        raise ValueError(
            f"{'layer ' + repr(name) + ': ' if name else ''}class(es) {classes[few].tolist()} "
            f"have fewer than two samples ({counts[few].tolist()}); the within-class metrics "
            f"{sorted(want & _WITHIN)} need a covariance, so every class needs at least two. Drop "
            "or merge those classes, collect more samples, or pass metrics= without them."
        )
    rtol = _check_rtol(rtol)
    st = _statistics(x, classes, idx, w, block)
    total = float(w.sum())
    a = w / total
    # within-class scatter at rounding level (every sample on its class mean up to a few ulps)
    scale = float(st.masses @ np.einsum("kd,kd->k", st.means, st.means))
    collapsed = st.tr_sigma_w <= (COLLAPSE_ULPS * np.finfo(np.float64).eps) ** 2 * scale
    if collapsed:
        st = dataclasses.replace(st, within_ss=np.zeros(K))
    out: dict[str, float] = {}
    notes: dict[str, str] = {}
    ot_info: dict[str, Any] | None = None
    nan = float("nan")

    coords = st.mean_coords  # (K, r)
    norms = np.sqrt(np.einsum("kr,kr->k", coords, coords))
    keep = st.kept(rtol)
    rank = int(keep.sum())

    p2 = None
    if want & _PASS2:
        p2 = _pass2(
            x,
            idx,
            w,
            st.means,
            st.basis,
            block,
            ncc=bool(want & {"nc4_ncc_error", "nc4_mismatch"}),
            head=head if "nc4_mismatch" in want else None,
            keep_coords="w2sq_to_class_means" in want and not collapsed,
        )
        if collapsed:
            p2 = dataclasses.replace(p2, within_proj=np.zeros_like(p2.within_proj))

    # ---- NC1 and He–Su D
    if want & {"nc1", "he_su_d"}:
        if rank == 0:
            why = "all class means coincide (Sigma_B = 0), so Tr(Sigma_W Sigma_B^+) is undefined"
            d_val = nan
            for m in ("nc1", "he_su_d"):
                notes[m] = why
        else:
            wp = np.diag(p2.within_proj)[keep] / total
            d_val = float(np.sum(wp / st.between_eigvals[keep]))
        if "nc1" in want:
            out["nc1"] = d_val / K
        if "he_su_d" in want:
            out["he_su_d"] = d_val
    if "nc1_tilde" in want:
        tb = st.tr_sigma_b
        out["nc1_tilde"] = st.tr_sigma_w / tb if tb > 0 else nan
        if tb <= 0:
            notes["nc1_tilde"] = "all class means coincide (Tr Sigma_B = 0)"

    # ---- CDNV
    cdnv_mat = None
    if "cdnv" in want:
        var = st.class_variances
        cdnv_mat = np.full((K, K), nan)
        zero_pairs = []
        for k in range(K):
            diff = coords - coords[k]
            dist2 = np.einsum("kr,kr->k", diff, diff)
            ok = dist2 > 0
            ok[k] = False
            cdnv_mat[k, ok] = (var[k] + var[ok]) / (2.0 * dist2[ok])
            zero_pairs += [
                (classes[k].item(), classes[j].item()) for j in range(k + 1, K) if not ok[j]
            ]
        if zero_pairs:
            out["cdnv"] = nan
            notes["cdnv"] = f"classes {zero_pairs[:5]} have identical means (zero distance)"
        else:
            out["cdnv"] = float(cdnv_mat[np.triu_indices(K, 1)].mean())

    # ---- NC2
    if want & {"nc2_equinorm", "nc2_equiangularity"}:
        if (norms > 0).all():
            if "nc2_equinorm" in want:
                out["nc2_equinorm"] = float(norms.std() / norms.mean())
            if "nc2_equiangularity" in want:
                cos = (coords @ coords.T) / np.outer(norms, norms)
                iu = np.triu_indices(K, 1)
                out["nc2_equiangularity"] = float(np.mean(np.abs(cos[iu] + 1.0 / (K - 1))))
        else:
            zero = classes[norms == 0].tolist()
            if "nc2_equinorm" in want:
                if norms.mean() > 0:
                    out["nc2_equinorm"] = float(norms.std() / norms.mean())
                else:
                    out["nc2_equinorm"] = nan
                    notes["nc2_equinorm"] = "all class means coincide with the global mean"
            if "nc2_equiangularity" in want:
                out["nc2_equiangularity"] = nan
                notes["nc2_equiangularity"] = (
                    f"the centred means of classes {zero[:5]} are zero: their angle is undefined"
                )
    if "nc2_etf_distance" in want:
        G = coords @ coords.T
        gn = float(np.linalg.norm(G))
        if gn > 0:
            P = np.eye(K) - 1.0 / K
            out["nc2_etf_distance"] = float(np.linalg.norm(G / gn - P / math.sqrt(K - 1)))
        else:
            out["nc2_etf_distance"] = nan
            notes["nc2_etf_distance"] = "all class means coincide (Gram matrix is zero)"

    # ---- NC3
    if "nc3" in want and head is not None:
        W = head[0]
        missing = sorted(set(range(W.shape[0])) - set(classes.tolist()))
        M = st.centred_means.T  # (d, K), columns in classifier-row order when none is missing
        wn, mn = float(np.linalg.norm(W)), float(np.linalg.norm(M))
        if missing:
            out["nc3"] = nan
            notes["nc3"] = (
                f"classes {missing[:10]} of the classifier have no samples, so their means (the "
                "columns of M) are unknown"
            )
        elif wn == 0 or mn == 0:
            out["nc3"] = nan
            notes["nc3"] = "the classifier or the centred class means are zero"
        else:
            out["nc3"] = float(np.sum((W.T / wn - M / mn) ** 2))

    # ---- NC4
    if "nc4_ncc_error" in want:
        out["nc4_ncc_error"] = float(a @ (p2.ncc_pred != idx))
    if "nc4_mismatch" in want and (head is not None or logits is not None):
        pred = p2.head_pred if head is not None else np.argmax(logits, axis=1)
        out["nc4_mismatch"] = float(a @ (classes[p2.ncc_pred] != pred))

    # ---- traces and the OT view
    if "tr_sigma_w" in want:
        out["tr_sigma_w"] = st.tr_sigma_w
    if "tr_sigma_b" in want:
        out["tr_sigma_b"] = st.tr_sigma_b
    if "w2sq_to_class_means" in want and collapsed:
        out["w2sq_to_class_means"] = 0.0
    elif "w2sq_to_class_means" in want:
        pos = w > 0
        res = wasserstein(
            p2.coords[pos], coords, a=a[pos] / a[pos].sum(), b=st.masses, method="exact"
        )
        ot_info = {"method": res.method, "converged": bool(res.converged), "gap": res.gap}
        if not res.converged:
            warnings.warn(
                f"{'layer ' + repr(name) + ': ' if name else ''}the exact transport solver for "
                f"w2sq_to_class_means did not converge (gap {res.gap:.3g}); the value is an upper "
                "bound.",
                stacklevel=3,
            )
        # the own-mean coupling is feasible: W2^2 <= Tr Sigma_W also after rounding
        out["w2sq_to_class_means"] = min(p2.resid_ss / total + res.cost, st.tr_sigma_w)

    return LayerCollapse(
        name=name,
        n_samples=int(x.shape[0]),
        n_classes=K,
        dim=int(x.shape[1]),
        metrics={m: out[m] for m in METRICS if m in out},
        notes=notes,
        cdnv_matrix=cdnv_mat,
        classes=classes,
        class_counts=counts,
        rank_between=rank,
        rtol=float(rtol),
        collapsed=bool(collapsed),
        transport=ot_info,
    )


def _check_head(
    raw: np.ndarray,
    d: int,
    n: int,
    classifier: Any,
    logits: ArrayLike | None,
) -> tuple[tuple[np.ndarray, np.ndarray | None] | None, np.ndarray | None]:
    head = None
    if classifier is not None:
        head = _check_classifier(classifier, d)
        _check_label_range(raw, head[0].shape[0], "classifier")
    lg = None
    if logits is not None:
        lg = to_numpy(logits, dtype=np.float64, what="logits")
        if lg.ndim != 2 or lg.shape[0] != n:
            raise ValueError(f"logits have shape {lg.shape}; they must be (n, K) with n = {n}.")
        if not np.all(np.isfinite(lg)):
            raise ValueError("logits contain NaN or inf values.")
        _check_label_range(raw, lg.shape[1], "logits")
    return head, lg


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
    labels : array-like of int, shape (n,)
        Class labels; with a classifier they must be row indices ``0..K-1`` of ``W``.
    classifier : ndarray (K, d) or pair (W, b), optional
        The linear classifier on these features; enables ``nc3`` and ``nc4_mismatch``.
    logits : array-like, shape (n, K), optional
        Used for ``nc4_mismatch`` when no classifier is given.
    weights : array-like, shape (n,), optional
        Non-negative sample weights $a_i$ (normalised internally); uniform when omitted.
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
        requested; NaN/inf features; labels outside the classifier's (or logits') classes;
        misshapen inputs; ``nc3``/``nc4_mismatch`` requested explicitly without a classifier.

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
    x, raw, classes, idx, w = _prepare(features, labels, weights)
    chosen = _check_metrics(metrics)
    _check_rtol(rtol)
    n, d = int(x.shape[0]), int(x.shape[1])
    head, lg = _check_head(raw, d, n, classifier, logits)
    if metrics is not None:
        if "nc3" in chosen and head is None:
            raise ValueError("nc3 needs the classifier W: pass classifier=W or (W, b).")
        if "nc4_mismatch" in chosen and head is None and lg is None:
            raise ValueError("nc4_mismatch needs a classifier (W, b) or logits.")
    return _compute(
        x,
        raw,
        classes,
        idx,
        w,
        metrics=chosen,
        head=head,
        logits=lg,
        rtol=rtol,
        block=_block_size(block_size, d),
        name=name,
    )


# ---------------------------------------------------------------------------------------------
# plain per-metric functions
# ---------------------------------------------------------------------------------------------
def _single(res: LayerCollapse, metric: str) -> float:
    v = res.metrics[metric]
    if math.isnan(v):
        raise ValueError(f"{metric} is undefined on this input: {res.notes[metric]}.")
    return v


def nc1(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    rtol: float = DEFAULT_RTOL,
    block_size: int | None = None,
) -> float:
    r"""Within-class variability relative to between-class (Papyan, Han & Donoho 2020).

    $$\mathrm{NC1} = \frac1K\operatorname{Tr}\big(\Sigma_W\Sigma_B^\dagger\big),\qquad
      \Sigma_W = \sum_i a_i (h_i - m_{y_i})(h_i - m_{y_i})^\top,\quad
      \Sigma_B = \frac1K\sum_k (m_k - m_G)(m_k - m_G)^\top,$$

    $a_i = 1/N$ unless weighted, $m_G$ the unweighted mean of the class means. The pseudo-inverse
    drops eigenvalues of $\Sigma_B$ at or below ``rtol`` times the largest.

    Parameters
    ----------
    features : array-like, memmap or Tensor, shape (n, d)
    labels : array-like of int, shape (n,)
    weights : array-like, shape (n,), optional
    rtol : float
        Relative eigenvalue cutoff of the pseudo-inverse (default 1e-10).
    block_size : int, optional
        Rows per streamed block.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        K < 2, a class with fewer than two samples, NaN/inf features, or all class means equal.

    Examples
    --------
    >>> from otcollapse.constructions import etf_clusters
    >>> round(nc1(*etf_clusters(4, 6, r=3.0, sigma=0.5)), 12)
    0.0625

    References
    ----------
    Papyan, Han & Donoho, "Prevalence of neural collapse during the terminal phase of deep
    learning training", PNAS 2020.
    """
    res = layer_collapse(
        features, labels, weights=weights, metrics=["nc1"], rtol=rtol, block_size=block_size
    )
    return _single(res, "nc1")


def separation_fuzziness(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    rtol: float = DEFAULT_RTOL,
    block_size: int | None = None,
) -> float:
    r"""He & Su's separation fuzziness $D = \operatorname{Tr}(\Sigma_W\Sigma_B^\dagger)$ (= K NC1).

    $$D = \operatorname{Tr}\big(SS_W\, SS_B^{+}\big),\qquad SS_W = \Sigma_W,\ SS_B = \Sigma_B$$

    with $\Sigma_W$, $\Sigma_B$ as in :func:`nc1`. He & Su's law of data separation says
    $D$ decays geometrically with depth in well-trained networks; :func:`collapse_profile`
    fits that rate.

    Parameters
    ----------
    features : array-like, memmap or Tensor, shape (n, d)
    labels : array-like of int, shape (n,)
    weights : array-like, shape (n,), optional
    rtol : float
        Relative eigenvalue cutoff of the pseudo-inverse.
    block_size : int, optional

    Returns
    -------
    float

    Examples
    --------
    >>> from otcollapse.constructions import etf_clusters
    >>> round(separation_fuzziness(*etf_clusters(4, 6, r=3.0, sigma=0.5)), 12)
    0.25

    References
    ----------
    He & Su, "A law of data separation in deep learning", PNAS 2023.
    """
    res = layer_collapse(
        features, labels, weights=weights, metrics=["he_su_d"], rtol=rtol, block_size=block_size
    )
    return _single(res, "he_su_d")


def nc1_tilde(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    block_size: int | None = None,
) -> float:
    r"""Tirer et al.'s trace ratio $\operatorname{Tr}\Sigma_W / \operatorname{Tr}\Sigma_B$.

    $$\widetilde{\mathrm{NC1}} = \frac{\sum_i a_i\lVert h_i - m_{y_i}\rVert^2}
        {\frac1K\sum_k\lVert m_k - m_G\rVert^2}$$

    Parameters
    ----------
    features : array-like, memmap or Tensor, shape (n, d)
    labels : array-like of int, shape (n,)
    weights : array-like, shape (n,), optional
    block_size : int, optional

    Returns
    -------
    float

    Examples
    --------
    >>> from otcollapse.constructions import etf_clusters
    >>> round(nc1_tilde(*etf_clusters(4, 6, r=3.0, sigma=0.5)) * 6, 12)
    1.0

    References
    ----------
    Tirer, Huang & Niles-Weed, "Perturbation analysis of neural collapse", ICML 2023.
    """
    res = layer_collapse(
        features, labels, weights=weights, metrics=["nc1_tilde"], block_size=block_size
    )
    return _single(res, "nc1_tilde")


def cdnv(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    block_size: int | None = None,
) -> float:
    r"""Class-distance normalised variance, averaged over class pairs (Galanti et al. 2022).

    $$\mathrm{CDNV} = \binom K2^{-1}\sum_{k<k'}\frac{V_k + V_{k'}}{2\lVert m_k - m_{k'}\rVert^2},
      \qquad V_k = \frac1{n_k}\sum_{y_i=k}\lVert h_i - m_k\rVert^2$$

    (with weights: $V_k = \frac1{p_k}\sum_{y_i=k}a_i\lVert h_i - m_k\rVert^2$). Every class needs
    two samples.

    Parameters
    ----------
    features : array-like, memmap or Tensor, shape (n, d)
    labels : array-like of int, shape (n,)
    weights : array-like, shape (n,), optional
    block_size : int, optional

    Returns
    -------
    float

    Examples
    --------
    >>> from otcollapse.constructions import etf_clusters
    >>> round(cdnv(*etf_clusters(4, 6, r=3.0, sigma=0.5)), 12)
    0.0625

    References
    ----------
    Galanti, György & Hutter, "On the role of neural collapse in transfer learning", ICLR 2022.
    """
    res = layer_collapse(features, labels, weights=weights, metrics=["cdnv"], block_size=block_size)
    return _single(res, "cdnv")


def cdnv_matrix(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    block_size: int | None = None,
) -> np.ndarray:
    r"""Pairwise CDNV $(V_k + V_{k'}) / (2\lVert m_k - m_{k'}\rVert^2)$ as a (K, K) matrix.

    $$C_{kk'} = \frac{V_k + V_{k'}}{2\lVert m_k - m_{k'}\rVert^2},\qquad
      V_k = \frac1{n_k}\sum_{y_i=k}\lVert h_i - m_k\rVert^2$$

    Rows and columns follow the sorted labels; the diagonal is NaN (a class is not paired with
    itself).

    Parameters
    ----------
    features : array-like, memmap or Tensor, shape (n, d)
    labels : array-like of int, shape (n,)
    weights : array-like, shape (n,), optional
    block_size : int, optional

    Returns
    -------
    ndarray, shape (K, K)

    Examples
    --------
    >>> from otcollapse.constructions import etf_clusters
    >>> C = cdnv_matrix(*etf_clusters(3, 4, r=1.0, sigma=0.1))
    >>> C.shape
    (3, 3)

    References
    ----------
    Galanti, György & Hutter, "On the role of neural collapse in transfer learning", ICLR 2022.
    """
    res = layer_collapse(features, labels, weights=weights, metrics=["cdnv"], block_size=block_size)
    _single(res, "cdnv")
    return res.cdnv_matrix


def nc2(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    block_size: int | None = None,
) -> dict[str, float]:
    r"""Convergence of the centred class means to a simplex ETF (Papyan, Han & Donoho 2020).

    $$\mathrm{equinorm} = \frac{\operatorname{std}_k\lVert m_k - m_G\rVert}
        {\operatorname{mean}_k\lVert m_k - m_G\rVert},\quad
      \mathrm{equiangularity} = \operatorname{mean}_{k<k'}\Big|\cos_{kk'} + \frac1{K-1}\Big|,\quad
      \mathrm{ETF\ distance} = \Big\lVert\frac{G}{\lVert G\rVert_F}
        - \frac{P_K}{\sqrt{K-1}}\Big\rVert_F$$

    with ``std`` the population standard deviation, $\cos_{kk'}$ the cosine between
    $m_k - m_G$ and $m_{k'} - m_G$, $G$ their Gram matrix and $P_K = I - \mathbf 1\mathbf 1^\top/K$.
    All three are 0 exactly on a simplex ETF. Singleton classes are allowed (means only).

    Parameters
    ----------
    features : array-like, memmap or Tensor, shape (n, d)
    labels : array-like of int, shape (n,)
    weights : array-like, shape (n,), optional
    block_size : int, optional

    Returns
    -------
    dict
        ``{"nc2_equinorm": ..., "nc2_equiangularity": ..., "nc2_etf_distance": ...}``

    Examples
    --------
    >>> import numpy as np
    >>> from otcollapse.constructions import simplex_etf
    >>> out = nc2(simplex_etf(5).T, np.arange(5))
    >>> all(abs(v) < 1e-12 for v in out.values())
    True

    References
    ----------
    Papyan, Han & Donoho, PNAS 2020.
    """
    names = ["nc2_equinorm", "nc2_equiangularity", "nc2_etf_distance"]
    res = layer_collapse(features, labels, weights=weights, metrics=names, block_size=block_size)
    return {m: _single(res, m) for m in names}


def nc3(
    features: ArrayLike,
    labels: ArrayLike,
    classifier: Any,
    *,
    weights: ArrayLike | None = None,
    block_size: int | None = None,
) -> float:
    r"""Self-duality of the classifier and the centred class means (Papyan, Han & Donoho 2020).

    $$\mathrm{NC3} = \Big\lVert\frac{W^\top}{\lVert W\rVert_F} - \frac{M}{\lVert M\rVert_F}
        \Big\rVert_F^2,\qquad M = [m_0 - m_G, \dots, m_{K-1} - m_G]\in\mathbb R^{d\times K}$$

    Row ``k`` of ``W`` is paired with the class labelled ``k``; every class of the classifier
    needs samples. The value lies in [0, 4] and is 0 when $W^\top \propto M$.

    Parameters
    ----------
    features : array-like, memmap or Tensor, shape (n, d)
    labels : array-like of int, shape (n,)
        Labels in ``0..K-1``.
    classifier : ndarray (K, d) or pair (W, b)
    weights : array-like, shape (n,), optional
    block_size : int, optional

    Returns
    -------
    float

    Examples
    --------
    >>> from otcollapse.constructions import etf_clusters
    >>> X, y = etf_clusters(3, 4, r=2.0, sigma=0.1)
    >>> import numpy as np
    >>> M = np.stack([X[y == k].mean(0) for k in range(3)])
    >>> round(nc3(X, y, 5.0 * M), 12)
    0.0

    References
    ----------
    Papyan, Han & Donoho, PNAS 2020.
    """
    res = layer_collapse(
        features,
        labels,
        classifier=classifier,
        weights=weights,
        metrics=["nc3"],
        block_size=block_size,
    )
    return _single(res, "nc3")


def nc4(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    classifier: Any = None,
    logits: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    block_size: int | None = None,
) -> dict[str, float]:
    r"""Nearest-class-centre error, and its mismatch with the classifier (Papyan et al. 2020).

    $$\mathrm{NCC\ error} = \sum_i a_i\,\big[\arg\min_k\lVert h_i - m_k\rVert \ne y_i\big],\qquad
      \mathrm{mismatch} = \sum_i a_i\,\big[\arg\min_k\lVert h_i - m_k\rVert
        \ne \arg\max_k (W h_i + b)_k\big]$$

    The mismatch uses ``logits`` when no classifier is given and is omitted when neither is.

    Parameters
    ----------
    features : array-like, memmap or Tensor, shape (n, d)
    labels : array-like of int, shape (n,)
    classifier : ndarray (K, d) or pair (W, b), optional
    logits : array-like, shape (n, K), optional
    weights : array-like, shape (n,), optional
    block_size : int, optional

    Returns
    -------
    dict
        ``{"nc4_ncc_error": ...}`` plus ``"nc4_mismatch"`` with a classifier or logits.

    Examples
    --------
    >>> from otcollapse.constructions import etf_clusters
    >>> nc4(*etf_clusters(3, 4, r=2.0, sigma=0.1))
    {'nc4_ncc_error': 0.0}

    References
    ----------
    Papyan, Han & Donoho, PNAS 2020.
    """
    names = ["nc4_ncc_error"]
    if classifier is not None or logits is not None:
        names.append("nc4_mismatch")
    res = layer_collapse(
        features,
        labels,
        classifier=classifier,
        logits=logits,
        weights=weights,
        metrics=names,
        block_size=block_size,
    )
    return {m: _single(res, m) for m in names}


def w2sq_to_class_means(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    block_size: int | None = None,
) -> float:
    r"""The OT view of NC1: squared W2 from the layer measure to its class-mean measure.

    $$W_2^2\Big(\sum_i a_i\delta_{h_i},\ \sum_k p_k\delta_{m_k}\Big) \le \operatorname{Tr}\Sigma_W
      = \sum_i a_i\lVert h_i - m_{y_i}\rVert^2,$$

    since sending every feature to its own class mean is a coupling. Exact (network simplex),
    with the full squared Euclidean cost. The ``n x K`` problem is solved on the coordinates in
    the span of the centred class means (dimension ``min(K, d)``); the part of each feature
    orthogonal to that span costs the same for every class and is added as a constant. The
    value is clipped at $\operatorname{Tr}\Sigma_W$, so rounding never breaks the inequality.

    Parameters
    ----------
    features : array-like, memmap or Tensor, shape (n, d)
    labels : array-like of int, shape (n,)
    weights : array-like, shape (n,), optional
    block_size : int, optional

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> w2sq_to_class_means(np.array([[0.0], [6.0], [5.0], [7.0]]), [0, 0, 1, 1])
    3.5

    References
    ----------
    Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet Training".
    """
    res = layer_collapse(
        features, labels, weights=weights, metrics=["w2sq_to_class_means"], block_size=block_size
    )
    return _single(res, "w2sq_to_class_means")


# ---------------------------------------------------------------------------------------------
# over depth
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PFCStatistic:
    r"""Progressive-feedforward-collapse statistics of one metric over depth.

    Attributes
    ----------
    metric : str
    layers : tuple of int
        Layers where the metric is defined (finite); the statistics use these only.
    kendall_tau : float or None
        Kendall's $\tau_b$ of the values against the layer index (``scipy.stats.kendalltau``);
        $-1$ for strictly decreasing. None when fewer than two layers or the values are constant
        (up to ``MONOTONE_RTOL`` relative to the largest).
    p_value : float or None
        Its two-sided p-value.
    frac_non_increasing : float or None
        Fraction of successive steps (between the defined layers) with
        ``v[l+1] <= v[l] + MONOTONE_RTOL * max(|v[l]|, |v[l+1]|)``.
    monotone : bool or None
        Every step non-increasing (the PFC conjecture holds for this metric).
    """

    metric: str
    layers: tuple[int, ...]
    kendall_tau: float | None
    p_value: float | None
    frac_non_increasing: float | None
    monotone: bool | None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class DecayFit:
    r"""Geometric decay of He–Su's $D$ over depth: $\log D_l \approx \alpha + \beta\, l$.

    Attributes
    ----------
    rate : float or None
        $e^\beta$: the per-layer factor, $D_l \approx D_{l_0}\,\mathrm{rate}^{\,l - l_0}$
        (below 1 for decay).
    slope, intercept : float or None
        $\beta$ and $\alpha$ of the least-squares line of $\log D$ against the layer index.
    r2 : float or None
        Coefficient of determination of the fit.
    layers : tuple of int
        The layers used: those where $D$ is finite and $> 0$.
    excluded : tuple of int
        The other layers.
    note : str
    """

    rate: float | None
    slope: float | None
    intercept: float | None
    r2: float | None
    layers: tuple[int, ...]
    excluded: tuple[int, ...]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return json_safe(dataclasses.asdict(self))


def _pfc(metric: str, values: np.ndarray) -> PFCStatistic:
    ok = np.isfinite(values)
    layers = tuple(int(i) for i in np.flatnonzero(ok))
    v = values[ok]
    if v.shape[0] < 2:
        return PFCStatistic(metric, layers, None, None, None, None)
    steps = v[1:] <= v[:-1] + MONOTONE_RTOL * np.maximum(np.abs(v[1:]), np.abs(v[:-1]))
    tau = p = None
    if np.ptp(v) > MONOTONE_RTOL * np.max(np.abs(v)):  # else constant up to rounding: no tau
        res = stats.kendalltau(np.asarray(layers, dtype=np.float64), v)
        tau, p = float(res.statistic), float(res.pvalue)
    return PFCStatistic(metric, layers, tau, p, float(steps.mean()), bool(steps.all()))


def _decay(values: np.ndarray) -> DecayFit:
    ok = np.isfinite(values) & (values > 0)
    layers = tuple(int(i) for i in np.flatnonzero(ok))
    excluded = tuple(int(i) for i in np.flatnonzero(~ok))
    if len(layers) < 2:
        return DecayFit(
            None, None, None, None, layers, excluded, "fewer than two layers with D > 0"
        )
    t = np.asarray(layers, dtype=np.float64)
    logd = np.log(values[ok])
    A = np.stack([np.ones_like(t), t], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(A, logd, rcond=None)
    fit = A @ np.array([alpha, beta])
    ss_tot = float(np.sum((logd - logd.mean()) ** 2))
    r2 = 1.0 - float(np.sum((logd - fit) ** 2)) / ss_tot if ss_tot > 0 else 1.0
    return DecayFit(
        float(math.exp(beta)), float(beta), float(alpha), r2, layers, excluded, "least squares"
    )


@dataclasses.dataclass(frozen=True, eq=False)
class CollapseProfile:
    """Collapse metrics at every layer of a trajectory, with PFC statistics over depth.

    Attributes
    ----------
    layers : tuple of LayerCollapse
        One per layer, in depth order.
    metrics : tuple of str
        The metrics computed (table columns).
    pfc : dict str -> PFCStatistic
        Per metric defined on at least one layer: Kendall tau against depth, fraction of
        non-increasing steps, monotone or not.
    decay : DecayFit or None
        Geometric decay of ``he_su_d`` over depth (None when it was not computed).
    """

    layers: tuple[LayerCollapse, ...]
    metrics: tuple[str, ...]
    pfc: dict[str, PFCStatistic]
    decay: DecayFit | None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(lc.name for lc in self.layers)

    def values(self, metric: str) -> np.ndarray:
        """One metric over depth: NaN where it is undefined or does not apply."""
        if metric not in self.metrics:
            raise ValueError(f"metric {metric!r} was not computed; have {list(self.metrics)}.")
        return np.array([lc.metrics.get(metric, float("nan")) for lc in self.layers])

    def table(self) -> list[dict[str, Any]]:
        """One dict per layer: ``layer``, ``name`` and every metric (None where it does not apply,
        NaN where undefined; the layer's ``notes`` say why)."""
        rows = []
        for i, lc in enumerate(self.layers):
            row: dict[str, Any] = {"layer": i, "name": lc.name}
            row.update({m: lc.metrics.get(m) for m in self.metrics})
            rows.append(row)
        return rows

    def format_table(self, precision: int = 4) -> str:
        """The table as aligned text (``-`` where a metric does not apply)."""
        head = ["layer", "name", *self.metrics]
        body = [
            [str(r["layer"]), str(r["name"])]
            + ["-" if r[m] is None else f"{r[m]:.{precision}g}" for m in self.metrics]
            for r in self.table()
        ]
        widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
        rows = [head, *body]
        lines = ["  ".join(c.rjust(wd) for c, wd in zip(row, widths, strict=True)) for row in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record: metrics, per-layer results, PFC statistics and the decay fit."""
        return {
            "metrics": list(self.metrics),
            "layers": [lc.to_dict() for lc in self.layers],
            "pfc": {m: s.to_dict() for m, s in self.pfc.items()},
            "decay": None if self.decay is None else self.decay.to_dict(),
            "conventions": {
                "global_mean": "unweighted mean of the class means",
                "sigma_w": "sum_i a_i (h_i - m_y)(h_i - m_y)^T, a_i = 1/N unless weighted",
                "sigma_b": "(1/K) sum_k (m_k - m_G)(m_k - m_G)^T",
                "pinv_rtol": self.layers[0].rtol,
                "monotone_rtol": MONOTONE_RTOL,
            },
        }


def collapse_profile(
    traj: Trajectory,
    *,
    classifier: Any = None,
    metrics: Sequence[str] | None = None,
    rtol: float = DEFAULT_RTOL,
    block_size: int | None = None,
    progress: bool = False,
) -> CollapseProfile:
    r"""Collapse metrics at every layer and their progressive-feedforward-collapse statistics.

    For each layer ``l`` the metrics of :func:`layer_collapse`; then, per metric, Kendall's
    $\tau$ against depth, the fraction of non-increasing steps and whether every step is
    non-increasing (the PFC conjecture: collapse metrics do not increase with depth), and the
    geometric decay rate of He–Su's $D$,

    $$\log D_l \approx \alpha + \beta\,l \ \text{(least squares over the layers with } D_l > 0),
      \qquad \mathrm{rate} = e^\beta .$$

    ``nc3`` and ``nc4_mismatch`` are computed at the last layer only, where the classifier acts.

    Parameters
    ----------
    traj : Trajectory
        Needs labels. Sample weights, when present, are used as the masses $a_i$.
    classifier : ndarray (K, d_L) or pair (W, b), optional
        Defaults to ``traj.classifier``; without one, ``nc4_mismatch`` falls back to
        ``traj.logits``.
    metrics : sequence of str, optional
        Names from :data:`METRICS` (default all that apply). Leave out
        ``w2sq_to_class_means`` for very large ``n`` (it solves an ``n x K`` exact problem per
        layer).
    rtol : float
        Pseudo-inverse cutoff for NC1 and D (relative to the largest eigenvalue of $\Sigma_B$).
    block_size : int, optional
        Rows per streamed block.
    progress : bool
        Show a progress bar over the layers (on a terminal only).

    Returns
    -------
    CollapseProfile

    Examples
    --------
    >>> import numpy as np
    >>> from otcollapse.constructions import transparent_model
    >>> g = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(3), 20)
    >>> traj = transparent_model(g.normal(size=(60, 6)), y, n_layers=4)
    >>> prof = collapse_profile(traj, metrics=["nc1_tilde", "tr_sigma_w"])
    >>> prof.pfc["tr_sigma_w"].monotone
    True

    References
    ----------
    Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet Training"; He & Su, PNAS 2023.
    """
    if not isinstance(traj, Trajectory):
        raise ValueError(
            f"collapse_profile needs a Trajectory; got {type(traj).__name__}. Build one with "
            "Trajectory.from_arrays(layers, labels=...), or use layer_collapse on one array."
        )
    if traj.labels is None:
        raise ValueError(
            "collapse metrics need class labels; this trajectory has none. Pass labels= to "
            "Trajectory.from_arrays."
        )
    chosen = _check_metrics(metrics)
    _check_rtol(rtol)
    if block_size is not None:
        _block_size(block_size, 1)
    head_given = classifier if classifier is not None else traj.classifier
    last = len(traj) - 1
    if metrics is not None:
        if "nc3" in chosen and head_given is None:
            raise ValueError(
                "nc3 needs the classifier: pass classifier=(W, b) or store it in the trajectory."
            )
        if "nc4_mismatch" in chosen and head_given is None and traj.logits is None:
            raise ValueError("nc4_mismatch needs a classifier (W, b) or the trajectory's logits.")
    bar = tqdm(
        range(len(traj)),
        desc="collapse",
        disable=not (progress and sys.stderr.isatty()),
        leave=False,
    )
    results = []
    for l in bar:
        x, raw, classes, idx, w = _prepare(traj.layers[l], traj.labels, traj.weights)
        head = lg = None
        if l == last:
            head, lg = _check_head(raw, traj.dims[l], traj.n_samples, head_given, traj.logits)
        results.append(
            _compute(
                x,
                raw,
                classes,
                idx,
                w,
                metrics=tuple(m for m in chosen if m not in _HEAD or l == last),
                head=head,
                logits=lg,
                rtol=rtol,
                block=_block_size(block_size, traj.dims[l]),
                name=traj.names[l],
            )
        )
    computed = tuple(m for m in chosen if any(m in r.metrics for r in results))
    prof = CollapseProfile(tuple(results), computed, {}, None)
    pfc = {m: _pfc(m, prof.values(m)) for m in computed if m not in _HEAD}
    decay = _decay(prof.values("he_su_d")) if "he_su_d" in computed else None
    return dataclasses.replace(prof, pfc=pfc, decay=decay)
