"""What the filter says about one record: accepted, rejected (with reasons) or passed through."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

ACCEPTED = "accepted"
REJECTED = "rejected"
PASSED = "passed"
# The rule of a rejection made because deciding the record raised (a bug, never the sender's fault).
INTERNAL_ERROR = "internal.error"
OUTCOMES = (ACCEPTED, REJECTED, PASSED)


@dataclass(frozen=True)
class RejectReason:
    """Why a record was rejected, in python-jsonschema's terms.

    `path` is a JSON pointer into the (normalized) record, `rule` names the schema rule
    that failed (e.g. `envelope.required`, `vmware-solutions.action`), `message` is the
    python-jsonschema message, `suggestion` is offered where one is obvious. For a schema
    failure, `validator` is the keyword that failed (`required`, `enum`, ...) and
    `schema_path` a JSON pointer to it within the rule's schema, as python-jsonschema's
    `ValidationError` has them; checks outside a schema (record size, encoding) have neither.
    """

    path: str
    rule: str
    message: str
    suggestion: Optional[str] = None
    validator: Optional[str] = None
    schema_path: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"path": self.path, "rule": self.rule, "message": self.message}
        if self.suggestion is not None:
            out["suggestion"] = self.suggestion
        if self.validator is not None:
            out["validator"] = self.validator
            out["schema_path"] = self.schema_path
        return out


@dataclass
class Verdict:
    """The result of filtering one record.

    - accepted: `record` is the normalized event (canonical form);
    - rejected: `record` is the original record, untouched, and `reasons` say why;
    - passed: `record` is the original record (not an Activity Tracker event).
    `warnings` are kinds such as `unknown_service` or `expected:/observer`; `fixes` names
    the normalization steps that changed the record.
    """

    outcome: str
    record: Any
    service: Optional[str] = None
    action: Optional[str] = None
    reasons: List[RejectReason] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    fixes: List[str] = field(default_factory=list)
    event_time: Optional[str] = None
    # `record` as one strict JSON line, when the filter already made it (a record read from
    # JSON text is tested for writability by encoding it); None otherwise.
    json_line: Optional[str] = None
    # `record` packed as msgpack, when the filter already packed it (a record decoded as
    # text is tested for writability so, see model.packed); None otherwise.
    packed: Optional[bytes] = None

    def dead_letter(self) -> Dict[str, Any]:
        """The record sent to the dead-letter route: the original plus the reasons."""
        return {
            "original": self.record,
            "reasons": [r.as_dict() for r in self.reasons],
        }

    def output(self) -> Any:
        """What goes on down the route chosen by `outcome`."""
        if self.outcome == REJECTED:
            return self.dead_letter()
        return self.record
