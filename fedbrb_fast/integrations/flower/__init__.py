"""Flower integration (Message API): sub-model strategies for FedBRB, FedRolex and HeteroFL that
send every node its own sub-model and plan and aggregate the replies with the fast aggregation
API, plus a ClientApp helper that trains the sub-model it receives.

Needs the optional extra: ``pip install 'fedbrb-fast[flower]'``.
"""

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fedbrb_fast.integrations.flower needs Flower: pip install 'fedbrb-fast[flower]'") from exc

from .client import make_client_app
from .evaluation import global_evaluate_fn
from .from_config import ConfigPartitions, client_app_from_config, strategy_from_config
from .records import PlanRecord
from .strategy import FedBRB, FedRolex, HeteroFL, RoundReport, SubModelStrategy

__all__ = ["ConfigPartitions", "FedBRB", "FedRolex", "HeteroFL", "PlanRecord", "RoundReport", "SubModelStrategy",
           "client_app_from_config", "global_evaluate_fn", "make_client_app", "strategy_from_config"]
