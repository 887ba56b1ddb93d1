"""What the ways in rely on from a filter, as `typing.Protocol`s instead of `hasattr` checks.

`EventFilter` is a `Filter`; `ReloadingFilter` is a `ReloadableFilter` (a filter that is
rebuilt between records when its tuning file changes or on request).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Protocol, runtime_checkable

from ..model.verdict import Verdict
from .pipeline import FilterSettings
from .rules import RuleSet
from .stats import FilterStats


class Filter(Protocol):
    """Decides records: accepted, rejected with reasons, or passed; counts into `stats`."""

    stats: FilterStats

    @property
    def rules(self) -> RuleSet:
        """The rule set records are decided with now."""
        ...

    @property
    def settings(self) -> FilterSettings:
        """The settings records are decided with now."""
        ...

    def process(self, record: Any) -> Verdict:
        """The verdict on one parsed record; never raises for a record's content."""
        ...

    def process_text(self, record: Any) -> Verdict:
        """`process` for a record a decoder vouches is text as it is (`codec.text_records`)."""
        ...

    def process_json(self, line: Any) -> Verdict:
        """The verdict on one JSON text (a record that does not parse is a rejection)."""
        ...

    def process_decoded_json(self, record: Any, plain: bool) -> Verdict:
        """The verdict on one record decoded from JSON text (`jsoncodec.loads_plain`, whose
        second value is `plain`), with its output's JSON line on the verdict."""
        ...


@runtime_checkable
class ReloadableFilter(Filter, Protocol):
    """A filter whose configuration can be reloaded while records flow."""

    tuning_path: Optional[str]
    reloads: int
    failed_reloads: int
    last_error: Optional[str]
    # Called once a new configuration is in place, before the reload is logged.
    on_reload: List[Callable[[], None]]

    def request_reload(self) -> None:
        """Reload before the next record (from a signal handler: sets a flag only)."""
        ...

    def start_watching(self, interval: float = 2.0) -> None:
        """Reload when a watched file changes, from a background thread."""
        ...

    def close(self) -> None:
        """Stop watching and save what must outlive the process."""
        ...
