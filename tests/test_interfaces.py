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
