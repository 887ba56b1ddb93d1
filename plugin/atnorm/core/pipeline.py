"""The filter core: record → accepted | rejected (with reasons) | passed through.

Contract (design/event-model.md): every record that enters leaves as exactly one of
- accepted: valid after normalization, in canonical form;
- rejected: the original record, untouched, plus the reasons;
- passed: not an Activity Tracker event at all, unchanged.
accepted + rejected + passed = received, and `stats` says so.

Everything that can be decided at start-up is: rules are compiled to predicates, levels
and policies are resolved into per-service rule lists, so `process` only runs checks.
The reference validator (python-jsonschema) is asked only to explain a rejection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..model.encodable import (
    SURROGATE,
    describe_error,
    encodable,
    first_unencodable,
    is_encodable,
    json_line,
    json_text,
)
from ..model.jsoncodec import decoded_plain, within_nesting
from ..model.jsoncodec import loads as json_loads
from ..model.packed import packed_text_record
from ..model.verdict import ACCEPTED, INTERNAL_ERROR, PASSED, REJECTED, RejectReason, Verdict
from ..resources import bundled_schema_dir
from .compiled import Predicate
from .normalize import DERIVED_FIELDS, EncodingProblem, Normalizer, as_text, find_event, is_event, make_wrapper_step
from .rules import Rule, RuleSet, SchemaDocument, standalone_rule
from .stats import FilterStats

MODES = ("enforce", "warn", "off")
UNKNOWN_ACTION_POLICIES = ("reject", "warn", "pass")
UNKNOWN_SERVICE_POLICIES = ("warn", "reject", "pass")
DEFAULT_MAX_RECORD_BYTES = 1 << 20

UNKNOWN_SERVICE = "unknown_service"
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# The rule of a rejection made because deciding the record failed.
UNKNOWN_ACTION = "unknown_action"


@dataclass
class ServicePolicy:
    """How strictly one service (or, as the default, every service) is checked."""

    mode: str = "enforce"  # enforce: failures reject; warn: failures are warnings; off: no service rules
    unknown_action: str = "reject"  # reject | warn (accept, counted) | pass (pass through unchecked)
    rule_levels: Dict[str, str] = field(default_factory=dict)  # short rule name → level


@dataclass
class FilterSettings:
    """Everything that shapes the filter, resolved once at start-up."""

    schema_dirs: List[Path] = field(default_factory=list)  # empty: the bundled schemas
    default_policy: ServicePolicy = field(default_factory=ServicePolicy)
    services: Dict[str, ServicePolicy] = field(default_factory=dict)
    envelope_levels: Dict[str, str] = field(default_factory=dict)
    unknown_service: str = "warn"  # warn: envelope only, accepted with a warning
    fraction_digits: int = 3
    derived_fields: Sequence[str] = DERIVED_FIELDS
    annotation_key: Optional[str] = "atnorm"
    record_fixes: bool = True
    aliases: Dict[str, str] = field(default_factory=dict)
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    # Rules added by a tuning file, by scope: "*" (every event, checked with the envelope)
    # or a service name. Each is {"name", "level", "schema"}, compiled once like the rest.
    extra_rules: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    # Warning kinds left unreported, by scope ("*" or a service name).
    ignored_warnings: Dict[str, List[str]] = field(default_factory=dict)
    # An envelope's other fields (`kubernetes`, `stream` beside a `log` string): merged
    # beside the event's, nested under `wrapper_key`, or dropped; see make_wrapper_step.
    wrapper_fields: str = "merge"
    wrapper_key: str = "wrapper"
    wrapper_clash: str = "event"


# Failed rules, each with a suggestion (or None) and the nearest allowed values (or None).
Failed = List[Tuple[Rule, Optional[str], Optional[List[str]]]]
# What to do with an action its service does not declare, chosen per service at start-up:
# add to `failed` or `warnings`, or return True to pass the record through unchecked.
UnknownActionPolicy = Callable[[str, Failed, List[str]], bool]


def _pass_unknown_action(action: str, failed: Failed, warnings: List[str]) -> bool:
    return True


def _warn_unknown_action(action: str, failed: Failed, warnings: List[str]) -> bool:
    warnings.append(UNKNOWN_ACTION)
    return False


def _reject_unknown_action(document: SchemaDocument, action_rule: Rule) -> UnknownActionPolicy:
    def reject(action: str, failed: Failed, warnings: List[str]) -> bool:
        nearest = document.nearest_actions(action)
        failed.append((action_rule, nearest[0] if nearest else None, nearest))
        return False
    return reject


@dataclass
class _CompiledService:
    document: SchemaDocument
    policy: ServicePolicy
    enforce: List[Rule]
    warn: List[Rule]
    action_rule: Optional[Rule]
    ignored: frozenset = frozenset()
    # None when the service's mode is off (its actions are not checked).
    on_unknown_action: Optional[UnknownActionPolicy] = None
    # Adds the service's warnings to the event's and drops the ignored kinds: (work, warnings) → warnings.
    add_warnings: Callable[[Dict[str, Any], List[str]], List[str]] = field(init=False)
    # True when no rule of the service fails (one accept test for all of them); always
    # False where the rules are not all the document's own (then each is asked) or where
    # ignored kinds must be dropped from the event's warnings.
    holds: Predicate = field(init=False)
    extra: bool = False

    def __post_init__(self) -> None:
        self.add_warnings = _warning_step(self.warn, self.ignored)
        self.holds = _never if self.extra or self.ignored else self.document.accept_test(self.enforce + self.warn)


def _never(work: Any) -> bool:
    return False


def _warning_step(warn: List[Rule], ignored: frozenset) -> Callable[[Dict[str, Any], List[str]], List[str]]:
    """The service's warning checks, chosen once: with ignored kinds, they are taken out of
    every warning of the event (the envelope's and the unknown action's too)."""
    checks = [(rule.check, rule) for rule in warn]

    def add(work: Dict[str, Any], warnings: List[str]) -> List[str]:
        for check, rule in checks:
            if not check(work):  # the rule's items are asked only when it fails
                warnings += rule.failed_kinds(work)
        return warnings

    def add_and_drop_ignored(work: Dict[str, Any], warnings: List[str]) -> List[str]:
        return [kind for kind in add(work, warnings) if kind not in ignored]

    return add_and_drop_ignored if ignored else add


def _record_error(rule: str, message: str) -> RejectReason:
    return RejectReason("", rule, message)


def _without_kinds(rules: List[Rule], ignored: frozenset) -> List[Rule]:
    """Warning rules with the ignored kinds taken out (a rule left with nothing is dropped)."""
    if not ignored:
        return rules
    kept: List[Rule] = []
    for rule in rules:
        if rule.items:
            items = [(kind, check) for kind, check in rule.items if kind not in ignored]
            if items:
                kept.append(replace(rule, items=items))
        elif rule.name not in ignored:
            kept.append(rule)
    return kept


class EventFilter:
    """Filters records; build once with `from_schemas`, then call `process` per record."""

    def __init__(self, rules: RuleSet, settings: Optional[FilterSettings] = None,
                 stats: Optional[FilterStats] = None) -> None:
        self.settings = settings or FilterSettings()
        self.rules = rules
        self.stats = stats or FilterStats()
        s = self.settings
        self.normalizer = Normalizer(fraction_digits=s.fraction_digits, derived_fields=s.derived_fields,
                                     annotation_key=s.annotation_key, record_fixes=s.record_fixes,
                                     aliases=s.aliases or None)
        extra = self._extra_rules("*")
        envelope = rules.envelope.rules + extra
        self._envelope_enforce = [r for r in envelope if r.level == "enforce"]
        self._envelope_warn = _without_kinds([r for r in envelope if r.level == "warn"],
                                             frozenset(s.ignored_warnings.get("*", ())))
        self._envelope_checks = [rule.check for rule in self._envelope_enforce]
        self._envelope_warn_checks = [(rule.check, rule) for rule in self._envelope_warn]
        # A record that passes every envelope rule at once (most do) needs no check one by
        # one; a tuning file's own rules have schemas of their own, so then none is merged.
        self._envelope_holds: Predicate = _never if extra else rules.envelope.accept_test(
            [r for r in rules.envelope.rules if r.level != "off"])
        self._services: Dict[str, _CompiledService] = {
            name: self._compile_service(document) for name, document in rules.services.items()
        }
        self._service_cache: Dict[str, Optional[str]] = {}
        # What an event whose action no service declares gets, chosen once.
        self._on_unknown_service = {"pass": self._pass_unknown_service,
                                    "reject": self._reject_unknown_service,
                                    }.get(s.unknown_service, self._warn_unknown_service)
        self._place_wrapper = make_wrapper_step(s.wrapper_fields, s.wrapper_key, s.wrapper_clash)

    @classmethod
    def from_schemas(cls, schema_dirs: Optional[Sequence[Path]] = None,
                     settings: Optional[FilterSettings] = None,
                     stats: Optional[FilterStats] = None) -> "EventFilter":
        """Load the bundled schemas (and any extra directories) and build the filter."""
        settings = settings or FilterSettings()
        directories = [bundled_schema_dir()] + [Path(d) for d in (schema_dirs or settings.schema_dirs)]
        levels: Dict[str, Dict[str, str]] = {"envelope": dict(settings.envelope_levels)}
        for name, policy in settings.services.items():
            levels[name] = dict(policy.rule_levels)
        return cls(RuleSet.load(directories, levels), settings, stats)

    def _compile_service(self, document: SchemaDocument) -> _CompiledService:
        policy = self.settings.services.get(document.name, self.settings.default_policy)
        enforce: List[Rule] = []
        warn: List[Rule] = []
        action_rule = document.rule("action")
        extra = self._extra_rules(document.name)
        if policy.mode != "off":
            for rule in document.rules + extra:
                if rule is action_rule or rule.level == "off":
                    continue  # the action is checked by set membership, below
                if rule.level == "enforce" and policy.mode == "enforce":
                    enforce.append(rule)
                else:
                    warn.append(rule)
        ignored = frozenset(self.settings.ignored_warnings.get(document.name, ()))
        on_unknown_action: Optional[UnknownActionPolicy] = None
        if policy.mode != "off":
            if policy.unknown_action == "pass":
                on_unknown_action = _pass_unknown_action
            elif policy.unknown_action == "reject" and policy.mode == "enforce" and action_rule is not None:
                on_unknown_action = _reject_unknown_action(document, action_rule)
            else:
                on_unknown_action = _warn_unknown_action
        return _CompiledService(document, policy, enforce, warn, action_rule, ignored, on_unknown_action,
                                extra=bool(extra))

    def _extra_rules(self, scope: str) -> List[Rule]:
        return [standalone_rule(spec["name"], spec["level"], spec["schema"])
                for spec in self.settings.extra_rules.get(scope, ())]

    def _service_of(self, action: Any) -> Optional[str]:
        if not isinstance(action, str):
            return None
        try:
            return self._service_cache[action]
        except KeyError:
            service = self.rules.service_for(action)
            if len(self._service_cache) < 10_000:  # actions come from traffic: stay bounded
                self._service_cache[action] = service
            return service

    # -- the per-record path ---------------------------------------------------------

    def process(self, record: Any, _text: bool = False) -> Verdict:
        """Decide one parsed record's fate and count it.

        Never raises for any record: whatever fails while deciding it (a bug, a value no
        step foresaw, nesting deeper than Python goes) makes the record a rejection
        `internal.error` naming the exception, with the original in a form every
        destination can encode.
        """
        try:
            text = record if _text else self._as_text(record)
            verdict = text if type(text) is Verdict else self._decide(text)
            packed = packed_text_record(verdict.record) if _text else None
            if packed is not None:
                verdict.packed = packed
            elif not is_encodable(verdict.record):
                verdict = self._made_writable(record, verdict)
        except Exception as exc:  # RecursionError included; the one place that catches all
            verdict = self._internal_error(record, exc)
        self.stats.count(verdict)
        return verdict

    def process_text(self, record: Any) -> Verdict:
        """`process` for a record known to be text as it is (every key a str, no bytes, no
        lone surrogate, at most a hundred levels deep: `as_text` would return it unchanged),
        as a decoder can vouch for (`codec.text_records`): it is not walked to find out.
        Its output is packed as msgpack once, which mostly tells its writability too
        (`model.packed`); the bytes are kept on the verdict for a msgpack writer."""
        return self.process(record, True)

    def _process_decoded(self, record: Any, plain: bool) -> Verdict:
        """`process` for a record decoded from JSON text. It holds JSON's types only, so
        encoding it (C) tests its writability instead of a walk, and the line is kept on
        the verdict for a JSON writer."""
        try:
            text = record if plain else self._as_text(record)
            verdict = text if type(text) is Verdict else self._decide(text)
            line = json_line(verdict.record)
            if line is None:
                verdict = self._made_writable(record, verdict)
            else:
                verdict.json_line = line
        except Exception as exc:  # as in `process`
            verdict = self._internal_error(record, exc)
        self.stats.count(verdict)
        return verdict

    def _made_writable(self, record: Any, verdict: Verdict) -> Verdict:
        """`verdict`, for an output some destination cannot encode as it is."""
        if verdict.outcome == REJECTED:
            # The dead letter must reach its file or downstream: NaN, integers past 64
            # bits, lone surrogates, too deep nesting become text saying what they were.
            verdict.record = encodable(verdict.record)
            return verdict
        # What goes on must go as it is: a writer that had to change it (or failed on it)
        # would lose the record or hand on something else under its outcome.
        return self._unwritable(record, verdict.record)

    @staticmethod
    def _unwritable(record: Any, output: Any) -> Verdict:
        path, what = first_unencodable(output)
        return Verdict(REJECTED, encodable(record),
                       reasons=[RejectReason(path, "record.encoding",
                                             f"{what} cannot be sent on as it is (msgpack holds 64-bit "
                                             "integers, strict JSON no NaN or infinity, text must be UTF-8)")])

    @staticmethod
    def _internal_error(record: Any, exc: BaseException) -> Verdict:
        try:
            original = encodable(record)
        except RecursionError:  # deeper than the cut can even walk to
            original = json_text(record)
        return Verdict(REJECTED, original,
                       reasons=[_record_error(INTERNAL_ERROR, f"the filter failed on this record: "
                                                              f"{describe_error(exc)}")])

    @staticmethod
    def _as_text(record: Any) -> Any:
        """`record` with bin keys and values as str, before any decision (see normalize.as_text).

        A record that cannot be text comes back as its rejection (a Verdict).
        """
        try:
            return as_text(record)
        except EncodingProblem as problem:
            return Verdict(REJECTED, encodable(record),
                           reasons=[RejectReason(problem.pointer, problem.rule, problem.message)])

    def _decide(self, record: Any) -> Verdict:
        if type(record) is not dict:
            kind = type(record).__name__ if record is not None else "null"
            return Verdict(REJECTED, record,
                           reasons=[_record_error("record.type", f"a record must be a JSON object, not {kind}")])
        fixes: List[str] = []
        wrapper: Optional[Dict[str, Any]] = {} if self._place_wrapper is not None else None
        event = find_event(record, fixes, wrapper)
        if not is_event(event):
            return Verdict(PASSED, record)
        work = self.normalizer.normalize(event, fixes)

        failed: Failed = []
        warnings: List[str] = []
        if not self._envelope_holds(work):
            for check in self._envelope_checks:
                if not check(work):
                    failed += [(rule, None, None) for rule in self._envelope_enforce if not rule.check(work)]
                    break
            for check, rule in self._envelope_warn_checks:
                if not check(work):  # the rule's items are asked only when it fails
                    warnings += rule.failed_kinds(work)

        action = work.get("action")
        service = self._service_of(action)  # a str action, or None
        if service is None:
            unknown_service = self._on_unknown_service(record, work, action, failed, warnings, fixes)
            if unknown_service is not None:
                return unknown_service
        else:
            compiled = self._services[service]
            assert isinstance(action, str)  # a service was found for it
            if compiled.on_unknown_action is not None and action not in compiled.document.actions:
                self.stats.count_unknown_action(service, action)
                if compiled.on_unknown_action(action, failed, warnings):
                    return Verdict(PASSED, record, service=service, action=action)
            if not compiled.holds(work):
                for rule in compiled.enforce:
                    if not rule.check(work):
                        failed.append((rule, None, None))
                warnings = compiled.add_warnings(work, warnings)

        if failed:
            return self._rejected(record, work, failed, [], service, warnings, fixes)
        if wrapper:
            fixes.append("wrapper")
            self.normalizer.annotate(work, service, fixes)
            self._place_wrapper(work, wrapper)  # type: ignore[misc]  # set whenever wrapper is
        else:
            self.normalizer.annotate(work, service, fixes)
        # Positional (outcome, record, service, action, reasons, warnings, fixes, event_time):
        # keywords cost more than the rest of making a verdict, once per accepted record.
        return Verdict(ACCEPTED, work, service, action, [], warnings, fixes, work.get("eventTime"))

    # -- unknown service policies: (record, work, action, failed, warnings, fixes) → a verdict
    # that ends the decision, or None to go on with the envelope's checks only.

    @staticmethod
    def _pass_unknown_service(record: Any, work: Dict[str, Any], action: Any, failed: Failed,
                              warnings: List[str], fixes: List[str]) -> Optional[Verdict]:
        return Verdict(PASSED, record, action=action if isinstance(action, str) else None)

    def _reject_unknown_service(self, record: Any, work: Dict[str, Any], action: Any, failed: Failed,
                                warnings: List[str], fixes: List[str]) -> Optional[Verdict]:
        unknown = RejectReason("/action", "unknown_service", f"no schema declares the service of {action!r}")
        return self._rejected(record, work, failed, [unknown], None, warnings, fixes)

    @staticmethod
    def _warn_unknown_service(record: Any, work: Dict[str, Any], action: Any, failed: Failed,
                              warnings: List[str], fixes: List[str]) -> Optional[Verdict]:
        warnings.append(UNKNOWN_SERVICE)
        return None

    @staticmethod
    def _rejected(record: Any, work: Dict[str, Any], failed: Failed,
                  reasons: List[RejectReason], service: Optional[str], warnings: List[str],
                  fixes: List[str]) -> Verdict:
        """The rejection of `record`: reasons from the reference validator, on the normalized form."""
        for rule, suggestion, nearest in failed:
            reasons += rule.reasons(work, suggestion, nearest) or [
                RejectReason("", rule.name, f"does not satisfy {rule.name}", suggestion)]
        action = work.get("action")
        return Verdict(REJECTED, record, service=service, action=action if isinstance(action, str) else None,
                       reasons=reasons, warnings=warnings, fixes=fixes)

    def process_json(self, line: Any) -> Verdict:
        """Decide one JSON document given as bytes or text; unreadable input is rejected.

        Like `process`, never raises: a failure becomes a rejection `internal.error`.
        """
        try:
            return self._process_json(line)
        except Exception as exc:
            return self._count(self._internal_error(line, exc))

    def process_decoded_json(self, record: Any, plain: bool) -> Verdict:
        """`process` for a record decoded from JSON text (`jsoncodec.loads_plain`), keys
        taken off it since or not (an exec-filter's tag and time keys): it holds JSON's
        types only, and `plain` says msgspec decoded it (no lone surrogate, not deep), so
        it is decided as `process_json` decides its record, the output's JSON line kept on
        the verdict (`json_line`). Like `process`, never raises."""
        return self._process_decoded(record, plain)

    def _process_json(self, line: Any) -> Verdict:
        limit = self.settings.max_record_bytes
        if type(line) is bytes and len(line) <= limit:
            # The common case in one C call: valid UTF-8, JSON msgspec takes, no lone
            # surrogate. Anything else is read below, where the error is worded.
            decoded, record = decoded_plain(line)
            if decoded:
                return self._process_decoded(record, True)
        if isinstance(line, (bytes, bytearray, memoryview)):
            raw = line if type(line) is bytes else bytes(line)
            if len(raw) > limit:
                return self._count(self._unreadable(raw, "record.size",
                                                    f"record of {len(raw)} bytes is over the {limit}-byte limit"))
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return self._count(self._unreadable(raw, "record.encoding",
                                                    f"invalid UTF-8 at byte {exc.start}: {exc.reason}"))
        else:
            text = str(line)
            if len(text) > limit:
                return self._count(self._unreadable(text, "record.size",
                                                    f"record of {len(text)} characters is over the {limit}-byte limit"))
        try:
            record = json_loads(text)
        except (ValueError, RecursionError) as exc:  # nesting deeper than the parser goes: unreadable too
            return self._count(self._unreadable(text, "record.json", f"not JSON: {exc}"))
        # Parsed JSON holds no bytes and only str keys; a lone surrogate can only come from
        # a \uD800-\uDFFF escape (or from text given as str), so only such text needs the scan.
        # Nor can text within the nesting bound hold what the text check's bound stops.
        plain = ("\\u" not in text or _ESCAPED_SURROGATE.search(text) is None) and (
            text.isascii() or SURROGATE.search(text) is None) and within_nesting(text)
        return self._process_decoded(record, plain)

    def _count(self, verdict: Verdict) -> Verdict:
        self.stats.count(verdict)
        return verdict

    @staticmethod
    def _unreadable(raw: Any, rule: str, message: str) -> Verdict:
        return Verdict(REJECTED, encodable(raw), reasons=[_record_error(rule, message)])
