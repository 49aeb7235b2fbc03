"""Flower integration (Message API): sub-model strategies for FedBRB, FedRolex and HeteroFL that
send every node its own sub-model and plan and aggregate the replies with the fast aggregation
API, plus a ClientApp helper that trains the sub-model it receives.

Needs the optional extra: ``pip install 'fedbrb-fast[flower]'``.
"""

from ...optional import require

require("flwr", "fedbrb_fast.integrations.flower")  # before the submodules import it
from .client import make_client_app  # noqa: E402
from .evaluation import global_evaluate_fn  # noqa: E402
from .from_config import ConfigPartitions, client_app_from_config, strategy_from_config  # noqa: E402
from .records import PlanRecord  # noqa: E402
from .strategy import FedBRB, FedRolex, HeteroFL, RoundReport, SubModelStrategy  # noqa: E402

__all__ = ["ConfigPartitions", "FedBRB", "FedRolex", "HeteroFL", "PlanRecord", "RoundReport", "SubModelStrategy",
           "client_app_from_config", "global_evaluate_fn", "make_client_app", "strategy_from_config"]
