"""The relay and the exec-filter tell a reloading filter from a plain one by its interface."""

from atnorm.core.interfaces import ReloadableFilter
from atnorm.core.pipeline import EventFilter, FilterSettings
from atnorm.core.reload import ReloadingFilter


def test_a_reloading_filter_is_reloadable_and_a_plain_one_is_not(tmp_path):
    tuning = tmp_path / "tuning.yaml"
    tuning.write_text("unknown_service: warn\n", encoding="utf-8")
    reloading = ReloadingFilter(lambda: FilterSettings(), str(tuning))
    try:
        assert isinstance(reloading, ReloadableFilter)
        assert not isinstance(EventFilter.from_schemas(), ReloadableFilter)
    finally:
        reloading.close()


def test_a_relay_decides_text_records_by_process_text_with_a_drift_log_too(tmp_path):
    from atnorm.core.drift import DriftLog
    from atnorm.relay.service import Relay
    from support import relay_settings

    for drift in (None, DriftLog()):
        event_filter = ReloadingFilter(lambda: FilterSettings(), drift=drift)
        try:
            relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)), event_filter)
            assert relay.router.decide_text == event_filter.process_text
            assert relay.router.decide == event_filter.process
        finally:
            event_filter.close()
