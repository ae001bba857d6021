r"""The plain per-metric functions: one number (or one small dict) per call.

Each is :func:`~otcollapse.collapse.metrics.layer_collapse` restricted to its metric(s), with one
difference: where ``layer_collapse`` reports an undefined metric as NaN with a note, these raise a
ValueError that gives the note. Their shared parameters are documented once, in
``layer_collapse``'s docstring; :func:`_shared_parameters` writes those entries into each
function's Parameters section at import, so ``help()`` shows every parameter (the API reference,
rendered from the source, shows a function's own entries and points to ``layer_collapse``).

References
----------
Papyan, Han & Donoho, PNAS 2020 (NC1-NC4); He & Su, PNAS 2023 (D); Tirer, Huang & Niles-Weed,
ICML 2023 (NC1 tilde); Galanti, György & Hutter, ICLR 2022 (CDNV); Wang, Gai & Zhang,
"Progressive Feedforward Collapse of ResNet Training" (the OT view of NC1).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from otcollapse._utils import ArrayLike
from otcollapse.collapse.metrics import LayerCollapse, layer_collapse
from otcollapse.collapse.statistics import DEFAULT_RTOL

__all__ = [
    "cdnv",
    "cdnv_matrix",
    "nc1",
    "nc1_tilde",
    "nc2",
    "nc3",
    "nc4",
    "separation_fuzziness",
    "w2sq_to_class_means",
]

_F = TypeVar("_F", bound=Callable[..., Any])

_HEADER = "Parameters\n----------\n"


def _cut(doc: str) -> tuple[str, str, str]:
    """A NumPy docstring, dedented, cut around its Parameters section: (the text before it, its
    entries, the text after it); without one, the cut is made before ``Returns``."""
    text = inspect.cleandoc(doc)
    if _HEADER in text:
        before, rest = text.split(_HEADER, 1)
        entries, _, after = rest.partition("\n\n")
        return before, entries, after
    before, returns, after = text.partition("Returns\n-------\n")
    return before, "", returns + after


def _entries(section: str) -> dict[str, str]:
    """The entries of a Parameters section by name (an entry: its ``name : type`` line and the
    indented description under it)."""
    items = re.split(r"\n(?=\S)", section) if section else []
    return {item.split(" :", 1)[0]: item for item in items}


#: the one text of each parameter the plain functions share with layer_collapse
_PARAMETERS = _entries(_cut(layer_collapse.__doc__)[1]) if layer_collapse.__doc__ else {}


def _shared_parameters(func: _F) -> _F:
    """Give ``func`` a complete Parameters section, in the order of its signature: its own entry
    where its docstring has one, :func:`layer_collapse`'s for the others.

    The shared parameters are documented once, in ``layer_collapse``; ``help(func)`` shows them
    in full. The API reference, rendered from the source, shows the function's own entries and
    its sentence that points to ``layer_collapse``. A parameter documented nowhere fails here, at
    import.
    """
    if not (func.__doc__ and _PARAMETERS):  # docstrings stripped (python -OO)
        return func
    before, section, after = _cut(func.__doc__)
    own = _entries(section)
    names = inspect.signature(func).parameters
    entries = "\n".join(own.get(p) or _PARAMETERS[p] for p in names)
    func.__doc__ = f"{before}{_HEADER}{entries}\n\n{after}"
    return func


def _checked(
    names: list[str], features: ArrayLike, labels: ArrayLike, **options: Any
) -> LayerCollapse:
    """:func:`layer_collapse` of ``names``, or a ValueError when one is undefined on this input."""
    res = layer_collapse(features, labels, metrics=names, **options)
    for m in names:
        if math.isnan(res.metrics[m]):
            raise ValueError(f"{m} is undefined on this input: {res.notes[m]}.")
    return res


@_shared_parameters
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

    The parameters are those of :func:`layer_collapse`.

    Returns
    -------
    float
        NC1: 0 when every sample sits on its class mean.

    Raises
    ------
    ValueError
        K < 2, a class with fewer than two samples, NaN/inf features, or all class means equal.

    Examples
    --------
    >>> from otcollapse.constructions import etf_clusters
    >>> X, y = etf_clusters(4, 6, r=3.0, sigma=0.5)  # NC1 = (K - 1)^2 sigma^2 / (K r^2)
    >>> round(nc1(X, y), 12)
    0.0625

    References
    ----------
    Papyan, Han & Donoho, "Prevalence of neural collapse during the terminal phase of deep
    learning training", PNAS 2020.
    """
    options = {"weights": weights, "rtol": rtol, "block_size": block_size}
    return _checked(["nc1"], features, labels, **options)["nc1"]


@_shared_parameters
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

    The parameters are those of :func:`layer_collapse`.

    Returns
    -------
    float
        $D = K\cdot\mathrm{NC1}$.

    Examples
    --------
    >>> from otcollapse.constructions import etf_clusters
    >>> round(separation_fuzziness(*etf_clusters(4, 6, r=3.0, sigma=0.5)), 12)
    0.25

    References
    ----------
    He & Su, "A law of data separation in deep learning", PNAS 2023.
    """
    options = {"weights": weights, "rtol": rtol, "block_size": block_size}
    return _checked(["he_su_d"], features, labels, **options)["he_su_d"]


@_shared_parameters
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

    The parameters are those of :func:`layer_collapse`.

    Returns
    -------
    float
        The trace ratio (scale-, shift- and rotation-invariant, unlike NC1 not invariant under
        other linear maps).

    Examples
    --------
    >>> from otcollapse.constructions import etf_clusters
    >>> round(nc1_tilde(*etf_clusters(4, 6, r=3.0, sigma=0.5)) * 6, 12)
    1.0

    References
    ----------
    Tirer, Huang & Niles-Weed, "Perturbation analysis of neural collapse", ICML 2023.
    """
    options = {"weights": weights, "block_size": block_size}
    return _checked(["nc1_tilde"], features, labels, **options)["nc1_tilde"]


@_shared_parameters
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

    The parameters are those of :func:`layer_collapse`.

    Returns
    -------
    float
        The pairwise CDNV averaged over the $K(K-1)/2$ class pairs.

    Examples
    --------
    >>> from otcollapse.constructions import etf_clusters
    >>> X, y = etf_clusters(4, 6, r=3.0, sigma=0.5)
    >>> print(f"{cdnv(X, y):.4f}")  # d sigma^2 (K - 1) / (2 K r^2)
    0.0625

    References
    ----------
    Galanti, György & Hutter, "On the role of neural collapse in transfer learning", ICLR 2022.
    """
    return _checked(["cdnv"], features, labels, weights=weights, block_size=block_size)["cdnv"]


@_shared_parameters
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

    The parameters are those of :func:`layer_collapse`.

    Returns
    -------
    ndarray, shape (K, K)
        Symmetric, NaN on the diagonal; the mean of the off-diagonal entries is :func:`cdnv`.

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
    return _checked(["cdnv"], features, labels, weights=weights, block_size=block_size).cdnv_matrix


@_shared_parameters
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

    The parameters are those of :func:`layer_collapse`.

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
    return dict(_checked(names, features, labels, weights=weights, block_size=block_size).metrics)


@_shared_parameters
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
    needs samples. The value lies in [0, 4] and is 0 when $W^\top \propto M$. The parameters
    other than ``classifier`` are those of :func:`layer_collapse`.

    Parameters
    ----------
    classifier : ndarray (K, d) or pair (W, b)
        The linear classifier on these features (row ``k`` of ``W`` for the class labelled ``k``).

    Returns
    -------
    float
        In [0, 4]: 0 for a classifier proportional to the centred means, 4 for the opposite one.

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
    options = {"classifier": classifier, "weights": weights, "block_size": block_size}
    return _checked(["nc3"], features, labels, **options)["nc3"]


@_shared_parameters
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

    The parameters are those of :func:`layer_collapse`.

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
    options = {"classifier": classifier, "logits": logits, "weights": weights}
    return dict(_checked(names, features, labels, block_size=block_size, **options).metrics)


@_shared_parameters
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

    The parameters are those of :func:`layer_collapse`.

    Returns
    -------
    float
        $W_2^2$ (full squared Euclidean cost), at most $\operatorname{Tr}\Sigma_W$.

    Examples
    --------
    >>> import numpy as np
    >>> w2sq_to_class_means(np.array([[0.0], [6.0], [5.0], [7.0]]), [0, 0, 1, 1])
    3.5

    References
    ----------
    Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet Training".
    """
    name = "w2sq_to_class_means"
    return _checked([name], features, labels, weights=weights, block_size=block_size)[name]
