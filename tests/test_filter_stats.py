"""FilterStats' counters: Counters in every way the monitoring and the worker pool use them."""

import pickle
from collections import Counter

from atnorm.core.stats import Counts, FilterStats
from atnorm.model.verdict import ACCEPTED, REJECTED, RejectReason, Verdict


def test_counts_add_update_and_read_as_a_counter_does():
    counts, reference = Counts({"a": 1}), Counter({"a": 1})
    for counter in (counts, reference):
        counter["b"] += 2
        counter.update(Counter({"a": 3, "c": 1}))
        counter.update(["c", "c"])
        counter["d"] -= 1
    assert counts == reference and list(counts.items()) == list(reference.items())
    assert counts["missing"] == 0 and "missing" not in counts
    assert counts + Counter({"a": 1}) == reference + Counter({"a": 1})
    assert pickle.loads(pickle.dumps(counts)) == counts
    del counts["a"]
    assert "a" not in counts


def test_a_verdict_is_counted_under_every_name_it_carries():
    stats = FilterStats()
    stats.count(Verdict(ACCEPTED, {}, "kms", "kms.key.read", [], ["expected:/observer"], ["eventTime", "trim:/action"]))
    stats.count(Verdict(REJECTED, {}, action="x.y.z", reasons=[RejectReason("", "envelope.required", "m")]))
    snapshot = stats.snapshot()
    assert (snapshot["received"], snapshot["accepted"], snapshot["rejected"]) == (2, 1, 1)
    assert snapshot["by_service"] == {"accepted:kms": 1, "rejected:x": 1}
    assert snapshot["rejections"] == {"envelope.required:x": 1}
    assert snapshot["warning_kinds"] == {"expected:/observer": 1}
    assert snapshot["fixes"] == {"eventTime": 1, "trim:/action": 1}
