"""Who may do what on a shared deployment, enforced in the core: names, owners, the teacher,
read-only mode, per-person and per-server limits, and the leaderboard."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mnist_core.service import access
from mnist_core.service.access import NameTaken, NotAllowed, Person
from mnist_core.settings import ConfigError, Limits, SettingError, check_settings
from mnist_core.engine.config import TrainConfig
from mnist_core.service.history import leaderboard, runs_frame, visible_runs
from mnist_core.service.lifecycle import HOST, run_id_for
from mnist_core.service.jobs import submit
from mnist_core.service.store import RunStore

ADA, BOB, TEACHER = Person("Ada"), Person("Bob"), Person("Tess", teacher=True)
MARKUP = set("[]()<>*_`#!|\\{}~:/&;\"=")


@pytest.fixture()
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs")


def ended(store: RunStore, run_id: str, owner: str, accuracy: float | None = None, seconds: float = 10.0) -> None:
    """A run of `owner` that ended: finished with `accuracy`, else cancelled."""
    store.enqueue(run_id, TrainConfig(model="linear", seed=len(run_id)).to_dict(), owner)
    if accuracy is None:
        store.request_stop(run_id)
        return
    store.claim(run_id, os.getpid(), HOST)
    store.update_run(run_id, test_accuracy=accuracy, duration_s=seconds, epochs_done=1)
    store.transition(run_id, "finished")


def test_names_are_cleaned_and_markup_is_refused():
    assert access.clean_name("  Ada   Lovelace ") == "Ada Lovelace"
    assert access.clean_name("Zoë O'Brien-Li") == "Zoë O'Brien-Li"
    for bad in ("", "   ", "[x](http://e.example)", "<b>hi</b>", "a_b", "*bold*", "x" * 40, "-dash", "alice (command line)"):
        with pytest.raises(NotAllowed):
            access.clean_name(bad)


@given(st.text(max_size=40))
def test_an_accepted_name_never_carries_markup(raw):
    try:
        name = access.clean_name(raw)
    except NotAllowed:
        return
    assert not MARKUP & set(name) and name == name.strip() and len(name) <= access.NAME_MAX


def test_a_name_belongs_to_the_browser_that_claimed_it(store):
    mine, theirs = access.new_token(), access.new_token()
    assert access.claim_name(store, "Ada", mine) == "Ada"
    assert access.claim_name(store, "Ada", mine) == "Ada"  # again, from another tab of the same browser
    with pytest.raises(NameTaken, match="already uses the name ADA"):
        access.claim_name(store, "ADA", theirs)  # case does not make it another name
    assert access.person_for_token(store, mine) == Person("Ada")
    assert access.person_for_token(store, theirs) == access.ANONYMOUS
    assert access.person_for_token(store, "not-a-token") == access.ANONYMOUS
    assert access.person_for_token(store, mine, teacher=True).teacher


def test_login_identity_and_teachers():
    teachers = access.teacher_emails(" Tess@School.org , ")
    assert access.person_from_login({"email": "tess@school.org"}, teachers) == Person("tess@school.org", True, True)
    assert not access.person_from_login({"email": "ada@school.org"}, teachers).teacher
    with pytest.raises(NotAllowed):
        access.person_from_login({"name": "no e-mail"}, teachers)
    assert access.passphrase_matches("open sesame", "open sesame")
    assert not access.passphrase_matches("open", "open sesame")
    assert not access.passphrase_matches("", "")  # no passphrase configured: nobody is the teacher


def test_only_the_owner_or_the_teacher_may_stop_or_delete(store):
    limits = Limits()
    store.enqueue("linear-running", TrainConfig(model="linear").to_dict(), "Ada", worker=(os.getpid(), HOST))
    ended(store, "linear-done", "Ada", 0.9)
    with pytest.raises(NotAllowed, match="Only the run's owner or the teacher may stop it; this is Ada's run"):
        access.stop_run(store, "linear-running", BOB, limits)
    with pytest.raises(NotAllowed, match="may delete it"):
        access.delete_run(store, "linear-done", BOB, limits)
    with pytest.raises(NotAllowed, match="Give your name"):
        submit(store, TrainConfig(model="linear", seed=9), "", limits)
    assert not store.stop_requested("linear-running") and store.get_run("linear-done")
    runs = store.list_runs()
    assert access.manageable(BOB, runs, limits) == []
    assert {r.id for r in access.manageable(ADA, runs, limits)} == {"linear-running", "linear-done"}
    assert access.manageable(TEACHER, runs, Limits(read_only=True)) == []
    assert access.stop_run(store, "linear-running", ADA, limits)
    access.delete_run(store, "linear-done", TEACHER, limits)
    assert store.get_run("linear-done") is None
    with pytest.raises(NotAllowed, match="does not exist"):
        access.delete_run(store, "linear-done", TEACHER, limits)


def test_read_only_means_nothing_writes(store):
    read_only = Limits(read_only=True)
    ended(store, "linear-done", "Ada", 0.9)
    store.enqueue("linear-running", TrainConfig(model="linear").to_dict(), "Ada", worker=(os.getpid(), HOST))
    for attempt in (lambda: access.delete_run(store, "linear-done", TEACHER, read_only),
                    lambda: access.stop_run(store, "linear-running", ADA, read_only),
                    lambda: access.pin_run(store, "linear-done", TEACHER, read_only),
                    lambda: access.clear_class(store, TEACHER, read_only)):
        with pytest.raises(NotAllowed, match="read-only"):
            attempt()
    with pytest.raises(ConfigError, match="read-only"):
        submit(store, TrainConfig(model="linear", seed=3), "Ada", read_only)
    assert store.get_run("linear-done") and not store.stop_requested("linear-running")


def test_the_teacher_pins_a_reference_and_clears_the_class(store):
    limits = Limits()
    ended(store, "linear-ref", "Tess", 0.95)
    ended(store, "linear-a", "Ada", 0.9)
    ended(store, "linear-b", "Bob")
    store.enqueue("linear-waiting", TrainConfig(model="linear", seed=77).to_dict(), "Bob")
    with pytest.raises(NotAllowed, match="Only the teacher"):
        access.pin_run(store, "linear-a", ADA, limits)
    with pytest.raises(NotAllowed, match="Only the teacher"):
        access.clear_class(store, BOB, limits)
    access.pin_run(store, "linear-ref", TEACHER, limits)
    assert access.pinned_run(store) == "linear-ref"
    assert [r.id for r in visible_runs(store.list_runs(), "Ada", access.pinned_run(store))] == ["linear-ref", "linear-a"]
    assert access.clear_class(store, TEACHER, limits) == (1, 3)  # the waiting run stopped, then deleted
    assert [r.id for r in store.list_runs()] == ["linear-ref"]
    access.pin_run(store, None, TEACHER, limits)
    assert access.pinned_run(store) is None


def test_the_leaderboard_ranks_each_persons_best_run_ties_to_the_faster(store):
    ended(store, "linear-a1", "Ada", 0.91, seconds=30)
    ended(store, "linear-a2", "Ada", 0.95, seconds=40)
    ended(store, "linear-b1", "Bob", 0.95, seconds=20)
    ended(store, "linear-c1", "Cy", 0.80)
    ended(store, "linear-d1", "Di")  # no finished run: not on the board
    board = leaderboard(runs_frame(store.list_runs()))
    assert list(board["person"]) == ["Bob", "Ada", "Cy"]
    assert list(board["rank"]) == [1, 2, 3]
    assert list(board["id"]) == ["linear-b1", "linear-a2", "linear-c1"]
    assert "batch 64" in board["settings"][0]


def test_waiting_limits_hold_per_person_and_per_server(store):
    """Four tabs of one person are one person: the limit counts runs by owner in the store."""
    limits = Limits(max_queued_per_person=3, max_queued_total=5)
    for seed in range(3):
        submit(store, TrainConfig(model="linear", seed=100 + seed), "Ada", limits)  # tabs 1-3
    with pytest.raises(ConfigError, match="3 runs waiting .limit 3 per person"):
        submit(store, TrainConfig(model="linear", seed=103), "Ada", limits)  # tab 4
    submit(store, TrainConfig(model="linear", seed=200), "Bob", limits)
    submit(store, TrainConfig(model="linear", seed=201), "Bob", limits)
    with pytest.raises(ConfigError, match="server's queue is full"):
        submit(store, TrainConfig(model="linear", seed=300), "Cy", limits)


def test_one_value_has_one_run_id():
    assert run_id_for(TrainConfig(epochs=1.0, lr=1)) == run_id_for(TrainConfig(epochs=1, lr=1.0))
    assert isinstance(TrainConfig(epochs=2.0).epochs, int)
    with pytest.raises(ConfigError, match="whole number"):
        TrainConfig(epochs=1.5)


@pytest.mark.parametrize("variable, value", [
    ("MNIST_MAX_EPOCHS", "abc"), ("MNIST_MAX_EPOCHS", "0"), ("MNIST_READ_ONLY", "maybe"),
    ("MNIST_MAX_QUEUED", "-1"), ("MNIST_TRAIN_THREADS", "two"), ("MNIST_TRAIN_NICE", "20"),
    ("MNIST_MAX_SWEEP", "0"), ("MNIST_RAY_ADDRESS", "http://head:6379"), ("MNIST_RAY_ADDRESS", "head"),
])
def test_a_wrong_setting_is_an_error_naming_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingError, match=variable):
        check_settings()


def test_settings_spelled_as_people_do(monkeypatch):
    for word, expected in (("on", True), ("YES", True), ("off", False), ("", False)):
        monkeypatch.setenv("MNIST_READ_ONLY", word)
        assert Limits.from_env().read_only is expected
    monkeypatch.setenv("MNIST_MAX_QUEUED_PER_SESSION", "7")  # the earlier name still works
    assert Limits.from_env().max_queued_per_person == 7
    from mnist_core.service.cluster import ray_address

    for address in ("auto", "10.0.0.5:6379", "ray://head.example.org:10001"):
        monkeypatch.setenv("MNIST_RAY_ADDRESS", f" {address} ")
        assert ray_address() == address
