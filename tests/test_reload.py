"""Reloading the tuning file while records flow: on change, on SIGHUP, under load; a bad
file keeps the running configuration; nothing is lost or counted twice."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from atnorm.core.reload import ReloadingFilter
from atnorm.core.settings import FilterOptions
from support import REPO, load_event

REJECT = "services:\n  vmware-solutions:\n    unknown_action: reject\n"
WARN = "services:\n  vmware-solutions:\n    unknown_action: warn   # accept, counted\n"
BROKEN = "services:\n  vmware-solutions:\n    unknown_action: maybe\n"


def unknown_action_event():
    event = load_event("vmware-kmip-create.json")
    event["action"] = "vmware-solutions.kmip-key.rotate"
    return event


def holder_for(path, **kwargs):
    values = FilterOptions.defaults(tuning=str(path))
    return ReloadingFilter.from_options(values, **kwargs)


def wait_until(condition, limit=30.0):
    """Wait for something another thread or process does (the limit only stops a hang)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("gave up waiting")
        time.sleep(0.01)


@pytest.fixture
def tuning(tmp_path):
    path = tmp_path / "tuning.yaml"
    path.write_text(REJECT)
    return path


def test_a_changed_file_is_picked_up_at_the_next_check(tuning):
    holder = holder_for(tuning, log=lambda line: None)
    assert holder.process(unknown_action_event()).outcome == "rejected"
    assert holder.check_for_changes(force=True) is None, "nothing changed yet"
    tuning.write_text(WARN)
    assert holder.check_for_changes(force=True) is True
    verdict = holder.process(unknown_action_event())
    assert verdict.outcome == "accepted" and verdict.warnings == ["unknown_action"]
    assert holder.reloads == 1 and holder.failed_reloads == 0


def test_a_file_replaced_by_rename_is_picked_up(tuning, tmp_path):
    holder = holder_for(tuning, log=lambda line: None)
    replacement = tmp_path / "new.yaml"
    replacement.write_text(REJECT.replace("reject", "pass  "))  # same size, new inode
    os.replace(replacement, tuning)
    assert holder.check_for_changes(force=True) is True
    assert holder.process(unknown_action_event()).outcome == "passed"


def test_checks_are_rate_limited_unless_forced(tuning):
    holder = holder_for(tuning, log=lambda line: None)
    holder._poll_interval = 3600
    tuning.write_text(WARN)
    assert holder.check_for_changes() is None, "not due yet: files are not looked at"
    assert holder.check_for_changes(force=True) is True


def test_a_failed_reload_keeps_the_previous_configuration(tuning):
    lines = []
    holder = holder_for(tuning, log=lines.append)
    tuning.write_text(BROKEN)
    assert holder.check_for_changes(force=True) is False
    assert holder.process(unknown_action_event()).outcome == "rejected", "the old configuration still runs"
    assert holder.failed_reloads == 1 and holder.reloads == 0
    assert holder.last_error == (f"{tuning}:3: key 'services.vmware-solutions.unknown_action': "
                                 f"expected one of reject, warn, pass, got 'maybe'")
    assert lines[-1].startswith("reload failed (file changed), the previous configuration keeps running: ")
    assert holder.check_for_changes(force=True) is None, "the same broken file is not retried"
    assert holder.failed_reloads == 1
    tuning.write_text(WARN)
    assert holder.check_for_changes(force=True) is True
    assert holder.process(unknown_action_event()).outcome == "accepted"
    assert holder.last_error is None


def test_a_deleted_file_keeps_the_previous_configuration(tuning):
    holder = holder_for(tuning, log=lambda line: None)
    tuning.unlink()
    assert holder.check_for_changes(force=True) is False
    assert "cannot read" in holder.last_error
    assert holder.process(unknown_action_event()).outcome == "rejected"


def test_a_mistake_at_start_up_is_raised():
    from atnorm.config.options import ConfigError

    with pytest.raises(ConfigError):
        holder_for(REPO / "no-such-tuning.yaml")


def test_rules_and_settings_are_those_running_now(tuning):
    holder = holder_for(tuning, log=lambda line: None)
    assert holder.settings.services["vmware-solutions"].unknown_action == "reject"
    assert "vmware-solutions" in holder.rules.services
    tuning.write_text(WARN)
    holder.reload()
    assert holder.settings.services["vmware-solutions"].unknown_action == "warn"
    assert holder.rules is holder.filter.rules


def test_counts_survive_a_reload(tuning):
    holder = holder_for(tuning, log=lambda line: None)
    stats = holder.stats
    holder.process(unknown_action_event())
    tuning.write_text(WARN)
    holder.reload()
    holder.process(unknown_action_event())
    assert holder.stats is stats and holder.filter.stats is stats
    assert (stats.outcomes["rejected"], stats.outcomes["accepted"]) == (1, 1)
    assert stats.unknown_actions[("vmware-solutions", "vmware-solutions.kmip-key.rotate")] == 2


def test_sighup_in_process_reloads_through_the_caller_loop(tuning):
    holder = holder_for(tuning, log=lambda line: None)
    holder._poll_interval = 3600  # only the signal can cause this reload
    previous = holder.install_sighup()
    try:
        signal.raise_signal(signal.SIGHUP)  # handled in this thread before the call returns
        assert holder.check_for_changes() is True
        assert holder.reloads == 1
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_sighup_wakes_the_watcher_thread(tuning):
    holder = holder_for(tuning, log=lambda line: None)
    previous = holder.install_sighup()
    holder.start_watching(interval=3600)
    try:
        tuning.write_text(WARN)
        os.kill(os.getpid(), signal.SIGHUP)
        wait_until(lambda: holder.reloads == 1)
        assert holder.process(unknown_action_event()).outcome == "accepted"
    finally:
        holder.close()
        signal.signal(signal.SIGHUP, previous)


def test_the_watcher_thread_notices_a_change(tuning):
    holder = holder_for(tuning, log=lambda line: None)
    holder.start_watching(interval=0.05)
    try:
        tuning.write_text(WARN)
        wait_until(lambda: holder.reloads == 1)
    finally:
        holder.close()
    assert holder.process(unknown_action_event()).outcome == "accepted"


def test_a_change_in_an_extra_schema_dir_is_picked_up(tmp_path):
    from atnorm import cli
    from support import FIXTURES

    generated = tmp_path / "gen"
    page = FIXTURES / "tuning" / "object-store-events.md"
    assert cli.main(["schemas", "build", str(page), "--out", str(generated)]) == 0
    path = tmp_path / "tuning.yaml"
    path.write_text("schema_dirs: [gen]\n")
    holder = holder_for(path, log=lambda line: None)
    event = load_event("cos-drifted-types.json")
    event["action"] = "cloud-object-storage.bucket.shred"
    assert holder.process(event).outcome == "rejected"
    # The docs page gains the action; the schemas are rebuilt in place.
    extended = tmp_path / "page.md"
    extended.write_text(page.read_text() + "| `cloud-object-storage.bucket.shred` | A bucket is shredded. |\n")
    assert cli.main(["schemas", "build", str(extended), "--out", str(generated)]) == 0
    assert str(generated / "services" / "cloud-object-storage.json") in holder.watched_files
    assert holder.check_for_changes(force=True) is True
    assert holder.process(event).outcome == "accepted"


def test_reload_under_load_loses_and_double_counts_nothing(tuning):
    """One thread filters 20 000 records while another rewrites the file and reloads."""
    holder = holder_for(tuning, log=lambda line: None)
    known = json.dumps(load_event("vsi-provision.json"))
    unknown = json.dumps(unknown_action_event())
    other = json.dumps(load_event("platform-log-not-an-event.json"))
    records = [known, unknown, other, "{broken"] * 5000
    seen = {"accepted": 0, "rejected": 0, "passed": 0}
    unknown_outcomes = set()
    started, resume = threading.Event(), threading.Event()

    def work():
        for index, line in enumerate(records):
            verdict = holder.process_json(line)
            seen[verdict.outcome] += 1
            if index % 4 == 1:
                unknown_outcomes.add((verdict.outcome, tuple(verdict.warnings)))
            if index == 3:
                started.set()
            if index == len(records) // 2:
                resume.wait(60)  # the second half runs after (and during) further reloads

    worker = threading.Thread(target=work)
    worker.start()
    started.wait(60)
    for number, text in enumerate([WARN, BROKEN, REJECT, WARN, REJECT, WARN]):
        tuning.write_text(text)
        holder.check_for_changes(force=True)
        if number == 1:
            resume.set()
    worker.join()

    stats = holder.stats
    assert stats.received == len(records) == 20000
    assert stats.outcomes["accepted"] + stats.outcomes["rejected"] + stats.outcomes["passed"] == 20000
    assert dict(stats.outcomes) == seen, "every verdict counted once, by whichever filter decided it"
    assert (holder.reloads, holder.failed_reloads) == (5, 1)
    # Each record was decided by one whole configuration: the old one or a new one.
    assert unknown_outcomes == {("rejected", ()), ("accepted", ("unknown_action",))}
    assert seen["passed"] == 5000
    assert stats.rejections[("record.json", "")] == 5000


def test_sighup_to_a_real_process_reloads_it(tuning, tmp_path):
    """A child process filters stdin line by line; SIGHUP makes it reload between lines."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from atnorm.core.reload import ReloadingFilter
        from atnorm.core.settings import FilterOptions
        values = FilterOptions.defaults(tuning={str(tuning)!r})
        holder = ReloadingFilter.from_options(values, log=lambda line: print(line, file=sys.stderr, flush=True))
        holder.install_sighup()
        holder.start_watching(interval=3600)
        print("ready", flush=True)
        for line in sys.stdin:
            print(holder.process_json(line).outcome, flush=True)
        holder.close()
        print(holder.stats.summary_line(), flush=True)
    """))
    child = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        assert child.stdout.readline().strip() == "ready"
        line = json.dumps(unknown_action_event()) + "\n"
        child.stdin.write(line)
        child.stdin.flush()
        assert child.stdout.readline().strip() == "rejected"
        tuning.write_text(WARN)
        child.send_signal(signal.SIGHUP)
        assert child.stderr.readline().startswith("reloaded (reload requested): ")
        child.stdin.write(line)
        child.stdin.flush()
        assert child.stdout.readline().strip() == "accepted"
        child.stdin.close()
        assert child.stdout.readline().strip() == "received=2 accepted=1 rejected=1 passed=0 warnings=1"
        assert child.wait(60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
