"""The files a deployment takes from the project: LICENSE and the systemd unit."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "conf" / "systemd" / "atnorm.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def unit_sections() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_the_license_is_the_apache_2_text_setup_cfg_names():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the whole text, not a pointer to it
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["license"] == "Apache-2.0"
    assert setup["metadata"]["license_files"].strip() == "LICENSE"


def test_the_unit_reloads_with_sighup_and_runs_sandboxed():
    service = unit_sections()["Service"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert " serve --config /etc/atnorm/atnorm.yaml" in service["ExecStart"]
    for option, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                          "PrivateTmp": "yes", "CapabilityBoundingSet": "",
                          "StateDirectory": "atnorm"}.items():
        assert service[option] == value, option
    assert int(service["TimeoutStopSec"]) > 10  # longer than the default shutdown_timeout


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path):
    atnorm = Path(sys.executable).with_name("atnorm")
    if not atnorm.exists():
        pytest.skip("the atnorm console script is not installed next to this Python")
    # The unit names /opt/atnorm, where the README installs it; verify checks that it exists.
    unit = tmp_path / "atnorm.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("/opt/atnorm/bin/atnorm", str(atnorm)),
                    encoding="utf-8")
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True)
    # verify exits 0 even for an option it ignores, so any line about the unit is a failure.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "atnorm.service" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr
