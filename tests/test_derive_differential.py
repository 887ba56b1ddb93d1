"""Derived fields against the plain way of finding them, on generated and mutated events.

`derive` caches action parts and CRN scopes (`crn:v1:cname:ctype:service:location:scope`)
and takes a CRN's resource type from its own text; the reference below parses every CRN
whole each time. Both must give the same fields, in the same order (the order is in the
output line), whatever came before.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional

from atnorm.bench.eventgen import EventGenerator
from atnorm.core.normalize import derive
from atnorm.core.pipeline import EventFilter
from support import crn_parts_as_specified

SEGMENTS = ["crn", "v1", "", "bluemix", "public", "kms", "us-south", "us-south-12", "a/", "a/abc", "s/x", "inst",
            "key", "", "k1", "k:2", "CRN", "V1", " crn", "crn "]
ACTIONS = ["is.instance.create", "kms.secrets.default.read", "kms", "kms.read", "a..b", "..", "is.x.y.z.w",
           "vmware-solutions.cluster.create", "cloud-object-storage.bucket.acl.read", "", ".", "x.y.z"]


def reference_derive(work: Dict[str, Any], service: Optional[str]) -> Dict[str, str]:
    action = work.get("action")
    derived: Dict[str, str] = {}
    if isinstance(action, str) and action.count(".") >= 2:
        segments = action.split(".")
        name = service or segments[0]
        rest = action[len(name) + 1:].split(".") if action.startswith(name + ".") else segments[1:]
        derived = {"service": name, "objectType": ".".join(rest[:-1]), "verb": rest[-1]}
    target = work.get("target")
    crn = crn_parts_as_specified(target.get("id")) if isinstance(target, dict) else None
    if crn:
        derived.update(crn)
    source = crn_parts_as_specified(work.get("logSourceCRN"))
    for key, value in (source or {}).items():
        derived.setdefault(key, value)
    return derived


def _crn(rng: random.Random, near: Any) -> Any:
    choice = rng.random()
    if choice < 0.2 and isinstance(near, str):  # the same scope or instance, another resource
        return ":".join(near.split(":")[:rng.randint(6, 10)] + [rng.choice(SEGMENTS) for _ in range(rng.randint(0, 3))])
    if choice < 0.4 and isinstance(near, str):  # a source's own CRN beside its target's: `<scope>:<instance>::`
        scope = ":".join(near.split(":")[:7])
        return scope + rng.choice(["", "", "", "d", ":x", "-1"]) + ":" + rng.choice(["inst", "", "i:j"]) + \
            rng.choice(["::", "::", ":key:", ":", ":::"])
    if choice < 0.9:
        return ":".join(rng.choice(SEGMENTS) for _ in range(rng.randint(1, 13)))
    return rng.choice([None, 7, "", ":" * 9, ["crn"], "crn:v1:a:b:c:d:e:f:g:h"])


def _events(count: int, seed: int) -> List[Dict[str, Any]]:
    rng = random.Random(seed)
    generated = EventGenerator(EventFilter.from_schemas().rules, seed).mix(count, 0.1)
    events = []
    for event in generated:
        if not isinstance(event, dict):
            continue
        event = dict(event)
        target = event.get("target")
        target = dict(target) if isinstance(target, dict) else target
        roll = rng.random()
        if roll < 0.3 and isinstance(target, dict):
            target["id"] = _crn(rng, target.get("id"))
        if rng.random() < 0.3:
            near = target.get("id") if isinstance(target, dict) else None
            event["logSourceCRN"] = _crn(rng, near)
        if rng.random() < 0.1:
            event["action"] = rng.choice(ACTIONS + [None, 5])
        if rng.random() < 0.05:
            target = rng.choice([None, "crn:v1:a:b:c:d:e:f:g:h", {}])
        event["target"] = target
        events.append(event)
    return events


def test_derived_fields_are_the_plain_way_s_in_the_same_order():
    events = _events(12_000, seed=7)
    services = [None, "kms", "is", "vmware-solutions", "cloud-object-storage", "x"]
    rng = random.Random(7)
    checked = 0
    for event in events + events[::-1]:
        service = rng.choice(services)
        assert list(derive(event, service).items()) == list(reference_derive(event, service).items()), event
        checked += 1
    assert checked >= 20_000


def test_a_source_beside_its_target_adds_what_the_target_lacks():
    targets = ["crn:v1:bluemix:public:kms:us-south:a/:inst:key:k1", "crn:v1:bluemix:public:kms:us-south:a/abc:inst:key:k1",
               "crn:v1:bluemix:public:kms:us-south:a/abc:inst::k1", "crn:v1:bluemix:public::us-south:s/x:inst:key:k"]
    suffixes = ["", "d", "c", ":x"]
    for target in targets:
        scope = target.rsplit(":", 3)[0]
        for suffix in suffixes:
            for tail in (":inst::", ":inst:key:", ":::", ":inst:", ":inst:::"):
                event = {"action": "kms.key.read", "target": {"id": target}, "logSourceCRN": scope + suffix + tail}
                assert list(derive(event, "kms").items()) == list(reference_derive(event, "kms").items()), event
