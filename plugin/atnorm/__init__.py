"""atnorm: validate and normalize IBM Cloud Activity Tracker events in a log-forwarding chain.

The public API; everything else is reached through the layer packages (see the README's
"Code map"). Names are imported on first use, so `import atnorm` stays cheap for a
process that only needs one layer (a filter-pool worker, the exec-filter child).

    from atnorm import EventFilter
    verdict = EventFilter.from_schemas().process(event)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import AtnormError, ConfigError, UsageError
from .version import __version__

if TYPE_CHECKING:
    from .core.pipeline import EventFilter, FilterSettings, ServicePolicy
    from .core.reload import ReloadingFilter
    from .core.rules import RuleSet
    from .core.stats import FilterStats
    from .model.verdict import ACCEPTED, PASSED, REJECTED, RejectReason, Verdict
    from .relay.handler import AuditHandler, AuditSender

# public name → module that defines it
_EXPORTS = {
    "EventFilter": "atnorm.core.pipeline",
    "FilterSettings": "atnorm.core.pipeline",
    "ServicePolicy": "atnorm.core.pipeline",
    "ReloadingFilter": "atnorm.core.reload",
    "RuleSet": "atnorm.core.rules",
    "FilterStats": "atnorm.core.stats",
    "Verdict": "atnorm.model.verdict",
    "RejectReason": "atnorm.model.verdict",
    "ACCEPTED": "atnorm.model.verdict",
    "REJECTED": "atnorm.model.verdict",
    "PASSED": "atnorm.model.verdict",
    "AuditSender": "atnorm.relay.handler",
    "AuditHandler": "atnorm.relay.handler",
}

__all__ = [
    "ACCEPTED", "PASSED", "REJECTED", "AtnormError", "AuditHandler", "AuditSender", "ConfigError",
    "EventFilter", "FilterSettings", "FilterStats", "RejectReason", "ReloadingFilter", "RuleSet",
    "ServicePolicy", "UsageError", "Verdict", "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'atnorm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_EXPORTS))
