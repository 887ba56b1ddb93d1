"""The local store: one JSON-lines file per route, every record written once, files reopened."""

import json
import os

import pytest

from atnorm.forward.codec import Entry, EventTime
from atnorm.model.verdict import ACCEPTED, PASSED, REJECTED
from atnorm.relay.localstore import LocalStore, LocalStoreError
from atnorm.relay.routing import RoutedBatch
from support import run

WHEN = EventTime(1_700_000_000, 0)


def lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def batch(route, *records):
    return RoutedBatch(route, "t", [Entry(WHEN, record) for record in records])


def test_each_route_has_its_file_and_each_record_one_line(tmp_path):
    async def scenario():
        store = LocalStore(str(tmp_path))
        assert await store.store([batch(ACCEPTED, {"n": 1}, {"n": 2}), batch(REJECTED, {"original": 3}),
                                  batch(PASSED, {"n": 4})])
        assert await store.store([batch(ACCEPTED, {"n": 5})])
        await store.close()
        return store

    store = run(scenario())

    assert [r["n"] for r in lines(store.path(ACCEPTED))] == [1, 2, 5]
    assert lines(store.path(REJECTED)) == [{"original": 3}]
    assert lines(store.path(PASSED)) == [{"n": 4}]
    assert store.records_written == 5


def test_a_record_json_cannot_hold_becomes_a_rejection_and_leaves_no_blank_line(tmp_path):
    async def scenario():
        store = LocalStore(str(tmp_path))
        ok = await store.store([batch(PASSED, {"bytes": b"\xff\x00", "big": 1 << 70, "nan": float("nan")}),
                                batch(ACCEPTED, {"n": 1})])
        await store.close()
        return ok, store

    ok, store = run(scenario())

    assert ok
    [dead] = lines(store.path(REJECTED))
    assert dead["reasons"][0]["rule"] == "unwritable"
    assert dead["original"]["big"] == str(1 << 70)
    assert lines(store.path(ACCEPTED)) == [{"n": 1}]
    assert not os.path.exists(store.path(PASSED)) or lines(store.path(PASSED)) == []


def test_after_reopen_new_records_go_to_a_new_file(tmp_path):
    async def scenario():
        store = LocalStore(str(tmp_path))
        await store.store([batch(ACCEPTED, {"n": 1})])
        os.rename(store.path(ACCEPTED), str(tmp_path / "accepted.jsonl.1"))  # as logrotate does
        store.reopen()
        await store.store([batch(ACCEPTED, {"n": 2})])
        await store.close()
        return store

    store = run(scenario())

    assert lines(tmp_path / "accepted.jsonl.1") == [{"n": 1}]
    assert lines(store.path(ACCEPTED)) == [{"n": 2}]


def test_a_data_dir_that_cannot_be_made_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    with pytest.raises(LocalStoreError, match="cannot create data directory"):
        LocalStore(str(blocker / "data"))
