"""Host slots: at most N of the SuperNodes sharing a machine compute at once (``fedlora.engines.flower.slots``)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from fedlora.engines.flower.slots import host_slot, slot_count, slots_folder


def test_one_slot_lets_one_holder_in_at_a_time(tmp_path):
    """A second holder waits while the first computes and gets in once it leaves."""
    events: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with host_slot(1, tmp_path):
            events.append("first in")
            inside.set()
            time.sleep(0.5)
            events.append("first out")

    def second() -> None:
        inside.wait(5)
        with host_slot(1, tmp_path):
            events.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert events == ["first in", "first out", "second in"]


def test_two_slots_let_two_holders_in_together(tmp_path):
    both = threading.Barrier(2, timeout=5)  # broken (an error) unless both holders are inside at once
    held: list[int | None] = []

    def hold() -> None:
        with host_slot(2, tmp_path) as index:
            held.append(index)
            both.wait()

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(held) == [0, 1] and not both.broken


def test_a_holder_that_dies_frees_its_slot(tmp_path):
    """The lock belongs to the holding process: killed (SIGKILL) while holding, its slot is free at once."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from fedlora.engines.flower.slots import host_slot\n"
        "with host_slot(1, Path(sys.argv[1])):\n"
        "    print('in', flush=True)\n"
        "    time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "in"
        got = threading.Event()

        def take() -> None:
            with host_slot(1, tmp_path):
                got.set()

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        assert not got.wait(0.5)  # held by the other process
        holder.kill()
        holder.wait(10)
        assert got.wait(5)
    finally:
        holder.kill()
        holder.wait(10)


def test_no_slots_means_no_lock_and_no_folder(tmp_path):
    with host_slot(None, tmp_path / "slots") as index:
        assert index is None
    assert not (tmp_path / "slots").exists()


@pytest.mark.parametrize(("raw", "message"), [("0", "must be >= 1"), ("two", "is not an integer")])
def test_host_slots_must_be_a_positive_integer(raw, message):
    with pytest.raises(ValueError, match=rf"^node config host-slots='{raw}' {message}$"):
        slot_count({"host-slots": raw})
    assert slot_count({}) is None and slot_count({"host-slots": "3"}) == 3


def test_the_slot_folder_is_per_user_under_tmpdir_unless_given(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert slots_folder({}) == tmp_path / f"fedlora-slots-{os.getuid()}"
    assert slots_folder({"slots-dir": str(tmp_path / "mine")}) == tmp_path / "mine"
