"""The typed settings objects: filter options, and the forward server's and sender's settings."""

import pickle

import pytest

from atnorm.config.options import seconds_text, size_bytes, size_text
from atnorm.core.settings import FILTER_OPTIONS, FilterOptions, filter_settings
from atnorm.forward import sender, server
from atnorm.forward.sender import SenderSettings
from atnorm.forward.server import ServerSettings
from atnorm.relay.service import sender_settings, server_settings
from support import relay_settings


@pytest.mark.parametrize("number, shown", [(16 << 20, "16M"), (1 << 30, "1G"), (512 << 10, "512k"), (1000, "1000")])
def test_a_size_is_shown_in_its_largest_whole_unit_and_reads_back(number, shown):
    assert size_text(number) == shown
    assert size_bytes(shown) == number


@pytest.mark.parametrize("seconds, shown", [(120.0, "120"), (0.5, "0.5"), (30, "30")])
def test_seconds_are_shown_as_written(seconds, shown):
    assert seconds_text(seconds) == shown


def test_filter_options_are_declared_once_as_fields():
    assert [option.key for option in FILTER_OPTIONS] == [
        "schemas", "tuning", "time_fraction_digits", "max_record_size", "annotate",
        "wrapper_fields", "wrapper_key", "wrapper_clash"]


def test_filter_options_at_their_defaults_make_the_default_filter_settings():
    options = FilterOptions.defaults()
    assert options.schemas == () and options.tuning is None and options.max_record_size == 1 << 20
    settings = filter_settings(FilterOptions.defaults(time_fraction_digits=6, annotate=""))
    assert (settings.fraction_digits, settings.annotation_key) == (6, None)


def test_filter_options_pickle_unchanged_for_the_workers():
    options = FilterOptions.defaults(schemas=("a", "b"), wrapper_fields="nest")
    assert pickle.loads(pickle.dumps(options)) == options


def test_the_relay_defaults_are_the_server_and_sender_defaults():
    relay = relay_settings()
    assert server_settings(relay) == ServerSettings(listen=[("127.0.0.1", 24224)])
    assert server.LISTEN == (("127.0.0.1", 24224),)
    built = sender_settings(relay)
    assert (built.ack_timeout, built.retry_max_wait, built.retry_deadline) == (
        sender.ACK_TIMEOUT, sender.RETRY_MAX_WAIT, sender.RETRY_DEADLINE)
    assert built.tls is False and built.compress is None


@pytest.mark.parametrize("given, message", [
    (dict(tls_key="key.pem"), "tls_key given without tls_cert"),
    (dict(users={"u": "p"}), "needs a shared_key"),
    (dict(max_inflight=0), "max_inflight"),
    (dict(max_connections_per_peer=0), "max_connections"),
    (dict(max_input_memory=1024), "max_input_memory"),
])
def test_server_settings_that_cannot_work_are_refused(given, message):
    with pytest.raises(ValueError, match=message):
        ServerSettings(**given)


@pytest.mark.parametrize("given, message", [
    (dict(compress="zstd"), "compress"), (dict(retry_max_times=0), "retry_max_times"),
])
def test_sender_settings_that_cannot_work_are_refused(given, message):
    with pytest.raises(ValueError, match=message):
        SenderSettings(**given)


def test_the_password_is_not_shown_with_the_sender_settings():
    assert "hunter2" not in repr(SenderSettings(username="u", password="hunter2"))
