"""otcollapse: the optimal-transport geometry of deep networks."""

from otcollapse.constructions import discrete_geodesic, etf_clusters, simplex_etf, transparent_model
from otcollapse.io import load_trajectory, save_trajectory
from otcollapse.measures import LayerMeasure, Trajectory
from otcollapse.transport import TransportResult, transport_methods, wasserstein

__version__ = "0.1.0"

__all__ = [
    "LayerMeasure",
    "Trajectory",
    "TransportResult",
    "discrete_geodesic",
    "etf_clusters",
    "load_trajectory",
    "save_trajectory",
    "simplex_etf",
    "transparent_model",
    "transport_methods",
    "wasserstein",
]
