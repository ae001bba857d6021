"""otcollapse: the optimal-transport geometry of deep networks."""

from otcollapse.collapse import (
    ClassStatistics,
    CollapseProfile,
    DecayFit,
    LayerCollapse,
    PFCStatistic,
    cdnv,
    cdnv_matrix,
    class_statistics,
    collapse_profile,
    layer_collapse,
    nc1,
    nc1_tilde,
    nc2,
    nc3,
    nc4,
    separation_fuzziness,
    w2sq_to_class_means,
)
from otcollapse.constructions import discrete_geodesic, etf_clusters, simplex_etf, transparent_model
from otcollapse.io import load_trajectory, save_trajectory
from otcollapse.measures import LayerMeasure, Trajectory
from otcollapse.transport import TransportResult, transport_methods, wasserstein

__version__ = "0.1.0"

__all__ = [
    "ClassStatistics",
    "CollapseProfile",
    "DecayFit",
    "LayerCollapse",
    "LayerMeasure",
    "PFCStatistic",
    "Trajectory",
    "TransportResult",
    "cdnv",
    "cdnv_matrix",
    "class_statistics",
    "collapse_profile",
    "discrete_geodesic",
    "etf_clusters",
    "layer_collapse",
    "load_trajectory",
    "nc1",
    "nc1_tilde",
    "nc2",
    "nc3",
    "nc4",
    "save_trajectory",
    "separation_fuzziness",
    "simplex_etf",
    "transparent_model",
    "transport_methods",
    "w2sq_to_class_means",
    "wasserstein",
]
