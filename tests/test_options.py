"""Option declarations: value parsers, flags, config files and their merge order."""

import argparse

import pytest

from atnorm.config.options import (
    Option,
    add_arguments,
    boolean,
    host_port,
    load_config_file,
    markdown_table,
    resolve,
    size_bytes,
    text,
)
from atnorm.errors import ConfigError

OPTIONS = [
    Option("listen", text, ["127.0.0.1:24224"], "where to listen", multiple=True),
    Option("spool_max_size", size_bytes, "64M", "largest spool"),
    Option("log_level", text, "info", "log level", choices=("debug", "info")),
    Option("filter", boolean, True, "filter records", cli=False),
]


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser, OPTIONS)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("given, expected", [
    ("8M", 8 << 20), ("512k", 512 << 10), ("1G", 1 << 30), ("2MiB", 2 << 20), (4096, 4096), ("100", 100),
])
def test_sizes_are_read_with_their_unit(given, expected):
    assert size_bytes(given) == expected


@pytest.mark.parametrize("given", ["0", "-1M", "lots", "", True])
def test_a_size_that_is_not_one_is_refused(given):
    with pytest.raises(ValueError):
        size_bytes(given)


@pytest.mark.parametrize("given, expected", [
    ("127.0.0.1:24224", ("127.0.0.1", 24224)),
    ("[::1]:9880", ("::1", 9880)),
    ("unix:///run/atnorm.sock", ("unix:///run/atnorm.sock", 0)),
])
def test_addresses_are_split_into_host_and_port(given, expected):
    assert host_port(given) == expected


@pytest.mark.parametrize("given", ["localhost", "host:http", "host:70000", ":24224"])
def test_an_address_without_a_usable_port_is_refused(given):
    with pytest.raises(ValueError):
        host_port(given)


def test_booleans_take_the_words_people_write():
    assert [boolean(v) for v in ("on", "yes", "true", "1", True)] == [True] * 5
    assert [boolean(v) for v in ("off", "no", "false", "0", False)] == [False] * 5
    with pytest.raises(ValueError):
        boolean("maybe")


def test_the_command_line_wins_over_the_file_and_the_file_over_the_default(tmp_path):
    config = tmp_path / "atnorm.yaml"
    config.write_text("spool-max-size: 8M\nlog_level: debug\nfilter: off\n", encoding="utf-8")
    file_values = load_config_file(str(config), OPTIONS)

    values = resolve(OPTIONS, parse("--log-level", "info"), file_values)

    assert values == {"listen": ["127.0.0.1:24224"], "spool_max_size": 8 << 20, "log_level": "info",
                      "filter": False}


def test_an_unknown_key_is_named_with_its_file_and_line(tmp_path):
    config = tmp_path / "atnorm.yaml"
    config.write_text("log_level: info\nlisten_on: 1.2.3.4:5\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config_file(str(config), OPTIONS)
    assert (caught.value.file, caught.value.line, caught.value.key) == (str(config), 2, "listen_on")
    # A misspelt key gets the nearest one; a key like no other gets the list of known ones.
    assert str(caught.value).endswith("unknown option; did you mean 'listen'?")
    config.write_text("log_level: info\nzzz: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config_file(str(config), OPTIONS)
    assert "known: filter, listen, log_level, spool_max_size" in str(caught.value)


def test_a_value_outside_the_choices_is_a_config_error_naming_the_flag():
    with pytest.raises(ConfigError) as caught:
        resolve(OPTIONS, parse("--log-level", "loud"))
    assert caught.value.key == "--log-level"
    assert "expected one of debug, info" in str(caught.value)


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path):
    config = tmp_path / "atnorm.yaml"
    config.write_text("- listen\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config_file(str(config), OPTIONS)


def test_the_readme_table_has_a_row_per_option_and_no_flag_for_file_only_ones():
    rows = markdown_table(OPTIONS).splitlines()
    assert len(rows) == 2 + len(OPTIONS)
    assert rows[3] == "| `spool_max_size` | `--spool-max-size` | `64M` | largest spool |"
    assert rows[5] == "| `filter` |  | `True` | filter records |"
