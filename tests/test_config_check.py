"""`atnorm config check` on relay and exec-filter files, `serve --dry-run`, ATNORM_ variables."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from atnorm import cli

REPO = Path(__file__).resolve().parent.parent
ATNORM = [sys.executable, "-m", "atnorm"]


def check(capsys, path: Path, *args: str):
    status = cli.main(["config", "check", str(path), *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err.splitlines()


def test_the_shipped_relay_config_checks_ok(capsys):
    status, out, _ = check(capsys, REPO / "conf" / "atnorm.yaml")
    assert status == 0 and "OK: relay configuration" in out


def test_every_mistake_of_a_relay_file_at_once_in_user_words(tmp_path, capsys):
    path = tmp_path / "relay.yaml"
    path.write_text('listen: [127.0.0.1:24224]\nmax_connections: "many"\nmax_conections: 5\n'
                    'idle_timeout: soon\nspool_sync: ful\n')
    status, _, lines = check(capsys, path)
    assert status == 2
    assert lines == [
        f"{path}:2: key 'max_connections': expected a positive whole number such as 256, got 'many'",
        f"{path}:3: key 'max_conections': unknown option; did you mean 'max_connections'?",
        f"{path}:4: key 'idle_timeout': expected a positive number of seconds such as 10 or 0.5, got 'soon'",
        f"{path}:5: key 'spool_sync': expected one of normal, full, got 'ful' (did you mean full?)",
        f"atnorm config check: 4 mistakes in {path}",
    ]
    assert not any("invalid literal" in line for line in lines)


def test_combinations_files_and_the_tuning_file_named_in_a_relay_file(tmp_path, capsys):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    tuning = tmp_path / "tuning.yaml"
    tuning.write_text("services:\n  vmware-solutoins:\n    mode: warn\n")
    path = tmp_path / "relay.yaml"
    path.write_text(f"listen: [127.0.0.1:24224]\ntls_key: {tmp_path}/key.pem\ndata_dir: {not_a_directory}\n"
                    f"tuning: {tuning}\nforward_tls_ca: {tmp_path}/ca.pem\n")
    status, _, lines = check(capsys, path)
    assert status == 2
    assert f"{path}:2: key 'tls_key': tls_key needs tls_cert too" in lines
    assert f"{path}:3: key 'data_dir': {not_a_directory} exists and is not a directory" in lines
    assert any(line.startswith(f"{path}:5: key 'forward_tls_ca': cannot load the CA bundle") for line in lines)
    assert any(line.startswith(f"{tuning}:2:") and "vmware-solutoins" in line for line in lines)
    assert lines[-1] == f"atnorm config check: 4 mistakes in {path}"


def test_an_exec_filter_file_is_told_apart_and_checked_with_its_own_keys(tmp_path, capsys):
    path = tmp_path / "exec.yaml"
    path.write_text("in_format: msgpak\nout_format: json\nlog_fil: /tmp/x.log\nwrapper_fields: nest\n")
    status, _, lines = check(capsys, path)
    assert status == 2
    assert lines == [
        f"{path}:1: key 'in_format': expected one of json, msgpack, tsv, got 'msgpak' (did you mean msgpack?)",
        f"{path}:3: key 'log_fil': unknown option; did you mean 'log_file'?",
        f"atnorm config check: 2 mistakes in {path}",
    ]
    path.write_text("in_format: tsv\nout_format: json\n")
    status, _, lines = check(capsys, path)
    assert status == 2 and "in_format tsv needs tsv_keys" in lines[0]
    path.write_text("in_format: msgpack\nlog_file: /tmp/x.log\n")
    status, out, _ = check(capsys, path)
    assert status == 0 and "OK: exec-filter configuration, 2 keys set" in out


def test_the_kind_can_be_named(tmp_path, capsys):
    path = tmp_path / "x.yaml"
    path.write_text("metrics_listen: 127.0.0.1:9467\n")
    status, out, _ = check(capsys, path, "--kind", "exec-filter")
    assert status == 0 and "exec-filter configuration" in out
    status, _, lines = check(capsys, path, "--kind", "tuning")
    assert status == 2


def dry_run(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(ATNORM + ["serve", "--dry-run", *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=120)


def test_dry_run_checks_the_whole_start_up_and_exits(tmp_path):
    result = dry_run("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("atnorm serve: dry run OK: would listen on 127.0.0.1:0; writing records to ")
    assert "25 services" in result.stdout
    assert not (tmp_path / "data").exists()  # nothing is created


def test_dry_run_reports_ports_in_use_tls_files_and_schemas_together(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = dry_run("--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path),
                         "--tls-cert", str(tmp_path / "cert.pem"), "--schemas", str(tmp_path / "none"))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 3, lines
    assert any(f"key 'listen': 127.0.0.1:{port}: cannot listen there: Address already in use" in line for line in lines)
    assert any("key 'tls_cert': cannot load the certificate and key" in line for line in lines)
    assert any("schema directory does not exist" in line for line in lines)
    assert "Traceback" not in result.stderr


def test_environment_variables_override_the_file_and_lose_to_flags(tmp_path):
    config = tmp_path / "relay.yaml"
    config.write_text(f"listen: [127.0.0.1:0]\ndata_dir: {tmp_path / 'from-file'}\n")
    from_env = dry_run("--config", str(config), env={"ATNORM_DATA_DIR": str(tmp_path / "from-env")})
    assert f"writing records to {tmp_path / 'from-env'}" in from_env.stdout, from_env.stderr
    flag = dry_run("--config", str(config), "--data-dir", str(tmp_path / "from-flag"),
                   env={"ATNORM_DATA_DIR": str(tmp_path / "from-env")})
    assert f"writing records to {tmp_path / 'from-flag'}" in flag.stdout
    listed = dry_run("--data-dir", str(tmp_path), env={"ATNORM_LISTEN": "127.0.0.1:0, [::1]:0"})
    assert "would listen on 127.0.0.1:0, [::1]:0" in listed.stdout or "cannot" in listed.stderr
    bad = dry_run("--data-dir", str(tmp_path), env={"ATNORM_MAX_CONNECTIONS": "many"})
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("atnorm serve: error: key 'ATNORM_MAX_CONNECTIONS': expected a positive "
                                  "whole number such as 256, got 'many'")


@pytest.mark.parametrize("args, message", [
    (["--max-connections", "many"], "expected a positive whole number such as 256, got 'many'"),
    (["--idle-timeout", "-3"], "expected a positive number of seconds"),
])
def test_type_errors_on_the_command_line_are_in_user_words(tmp_path, args, message):
    result = dry_run("--data-dir", str(tmp_path), *args)
    assert result.returncode == 2 and message in result.stderr and "invalid literal" not in result.stderr


def test_a_schema_directory_without_schemas_stops_start_up(tmp_path):
    empty = tmp_path / "schemas"
    empty.mkdir()
    result = dry_run("--data-dir", str(tmp_path), "--schemas", str(empty))
    assert result.returncode == 2
    assert f"{empty}: holds no schema" in result.stderr and "atnorm schemas build" in result.stderr


def test_the_start_up_line_says_how_many_services_and_actions_are_loaded(tmp_path):
    from relay_process import RelayProcess

    with RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)) as relay:
        relay.stop()
    [line] = [line for line in relay.lines if "listening on" in line]
    assert "filter on (25 services, 1059 actions)" in line
