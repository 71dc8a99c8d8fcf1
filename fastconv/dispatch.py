"""TRANSITION shim: the registry, rules, memory budgets and plans now live in their own modules."""

from __future__ import annotations

from .memory import get_output_limit, get_workspace_limit, set_output_limit, set_workspace_limit  # noqa: F401
from .plan import Plan  # noqa: F401
from .registry import BY_NAME, POOL_REGISTRY, POOLS, REGISTRY, Algorithm, get, names  # noqa: F401
from .rules import choose, select  # noqa: F401
