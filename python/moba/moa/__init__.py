"""MoA's automatic plan search for any HuggingFace causal LM (docs/python.md, "MoA plan search").

    profile  -> influence sums per layer and head by query-key distance (moba's engine)
    optimise -> one MILP per length trade-off under a density budget (HiGHS), the Pareto set
    validate -> candidate plans on held-out data against the dense model; the best is the plan
    apply    -> moba.register_moa(plan)

``python -m moba.moa --help`` runs the same flow from the command line.
"""

from .data import (Samples, copy_retrieval, dense_targets, load_tokens,  # noqa: F401
                   synthetic_retrieval, token_windows)
from .formats import (from_reference, reference_budget, reference_window,  # noqa: F401
                      save_reference, to_reference)
from .influence import MEASURES, attention_influence  # noqa: F401
from .optimise import Choice, budgets, check_density, pareto_set, solve, trade_offs  # noqa: F401
from .profile import (Profile, load_profiles, profile_model,  # noqa: F401
                      register_profile_attention, save_profiles)
from .rules import (RuleTable, bin_edges, default_rules, density, kept_pairs,  # noqa: F401
                    rule_table, window)
from .search import (SearchResult, plan_from_choice, rules_for, search, uniform_plan,  # noqa: F401
                     uniform_window)
from .validate import Metrics, check_plan, evaluate, pick_best  # noqa: F401
