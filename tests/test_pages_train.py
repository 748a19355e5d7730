"""The Train and Compare pages through Streamlit's AppTest: launch, watch, cache, compare.

The pages share one process-wide JobQueue and RunStore (st.cache_resource), as the browser
sessions of one server do; the store lives in the per-process MNIST_RUNS_DIR set by conftest.
Training is real but tiny: one epoch of the linear model, about a second.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mnist_core.service.access import claim_name, new_token
from mnist_core.settings import Limits
from mnist_core.engine.config import TrainConfig
from mnist_core.service.history import FORM_COLUMNS
from mnist_core.service.store import ACTIVE, RunStore

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
SEED = 4404  # unusual, so another test file training "linear, 1 epoch" cannot have cached this run
WAIT_S = 60

pytestmark = pytest.mark.skipif(not os.environ.get("MNIST_DATA_DIR"), reason="MNIST_DATA_DIR is not set")


TOKENS: dict[str, str] = {}  # one browser token per test person, as a cookie would keep it


def token_for(name: str) -> str:
    """The token of a browser whose visitor gave `name` (claimed in the store once)."""
    if name not in TOKENS:
        TOKENS[name] = new_token()
        claim_name(RunStore(os.environ["MNIST_RUNS_DIR"]), name, TOKENS[name])
    return TOKENS[name]


def open_page(page: str, run: str | None = None, person: str | None = "Ada", teacher: bool = False) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    if person:
        at.session_state["visitor_token"] = token_for(person)
    if teacher:
        at.session_state["is_teacher"] = True  # what a correct passphrase sets
    at.run()
    at.switch_page(page)
    if run is not None:
        at.query_params["run"] = run
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def fill_linear(at: AppTest, epochs: int = 1) -> None:
    at.selectbox(key="train_model").set_value("linear")
    at.number_input(key="train_epochs").set_value(epochs)
    at.number_input(key="train_batch_size").set_value(256)
    at.slider(key="train_val_split").set_value(0.1)
    at.number_input(key="train_seed").set_value(SEED)


def launch(at: AppTest) -> AppTest:
    at.form_submit_button[0].click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def runs_table(at: AppTest):
    """Compare's table of runs (the leaderboard above it is another dataframe)."""
    return next(d.value for d in at.dataframe if "status" in d.value.columns)


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def wait_until_ended(store: RunStore, run_id: str) -> str:
    deadline = time.monotonic() + WAIT_S
    while (status := store.get_run(run_id).status) in ACTIVE:
        assert time.monotonic() < deadline, f"run {run_id} still {status} after {WAIT_S} s"
        time.sleep(0.3)
    return status


@pytest.fixture(scope="module")
def runs() -> RunStore:
    return RunStore(os.environ["MNIST_RUNS_DIR"])


@pytest.fixture(scope="module")
def trained(runs: RunStore) -> str:
    """Launch the linear run through the form and wait for it; its id."""
    at = open_page("pages/train.py")
    fill_linear(at)
    launch(at)
    assert not at.error, texts(at.error)
    run_id = at.query_params.get("run")
    assert run_id and run_id.startswith("linear-"), at.query_params
    scripts = [element.proto.body for element in at.get("html")]
    assert any("st-key-train_run_section" in body and "scrollIntoView" in body for body in scripts)
    assert at.session_state["train_run"] == run_id
    record = runs.get_run(run_id)
    assert record is not None and record.config["batch_size"] == 256 and record.config["seed"] == SEED
    assert wait_until_ended(runs, run_id) == "finished", runs.get_run(run_id).message
    at.run()  # the page picks up the end of the run
    assert not at.exception
    assert "Finished: test accuracy" in texts(at.success)
    return run_id


def test_train_page_offers_every_setting_with_help():
    at = open_page("pages/train.py")
    keys = {w.key for kind in (at.selectbox, at.number_input, at.slider) for w in kind}
    for field in FORM_COLUMNS:  # every TrainConfig setting the form offers
        assert f"train_{field}" in keys, field
    for kind in (at.selectbox, at.number_input, at.slider):
        for widget in kind:
            if widget.key and widget.key.startswith("train_"):
                assert widget.help, widget.key
    assert not at.form_submit_button[0].disabled
    assert len(at.expander) >= 3  # loss vs metric, overfitting, softmax


def test_launched_run_finishes_and_shows_its_accuracy(trained: str, runs: RunStore):
    record = runs.get_run(trained)
    at = open_page("pages/train.py", run=trained)  # a reopened tab: only the URL remembers the run
    assert trained in texts(at.subheader), "the page re-attached to the run"
    metric = next(m for m in at.metric if m.label == "Test accuracy")
    assert metric.value == f"{record.test_accuracy:.2%}"
    assert record.test_accuracy > 0.8
    assert at.query_params["run"] == trained


def test_a_reopened_tab_shows_the_watched_runs_settings_in_the_form(trained: str):
    at = open_page("pages/train.py", run=trained)  # a reload, or a shared link: only the URL knows the run
    assert at.selectbox(key="train_model").value == "linear"
    assert at.number_input(key="train_batch_size").value == 256
    assert at.number_input(key="train_seed").value == SEED
    assert at.number_input(key="train_time_budget_s").value is None
    fresh = open_page("pages/train.py")  # no run named: the defaults
    assert fresh.selectbox(key="train_model").value == "cnn-small"


def test_a_runs_settings_can_be_copied_into_the_form(trained: str):
    at = open_page("pages/train.py", run=trained)
    at.button(key="recipe_cnn-sprint").click().run()  # the form now holds other settings
    assert at.selectbox(key="train_model").value == "cnn-sprint"
    at.button(key="copy_settings").click().run()
    assert not at.exception
    assert at.selectbox(key="train_model").value == "linear"
    assert at.number_input(key="train_batch_size").value == 256
    assert at.number_input(key="train_seed").value == SEED


def test_same_settings_again_are_served_from_the_store(trained: str, runs: RunStore):
    before = runs.get_run(trained)
    at = open_page("pages/train.py")
    fill_linear(at)
    launch(at)
    assert "Already trained" in texts(at.info)
    assert at.query_params["run"] == trained
    after = runs.get_run(trained)
    assert (after.status, after.created, after.test_accuracy) == ("finished", before.created, before.test_accuracy)


def test_compare_lists_the_run_with_its_accuracy(trained: str, runs: RunStore):
    at = open_page("pages/compare.py")
    table = runs_table(at)
    row = table[table["id"] == trained]
    assert row["owner"].item() == "Ada"
    board = at.dataframe[0].value
    assert board[board["person"] == "Ada"]["test_accuracy"].item() >= row["test_accuracy"].item()
    assert len(row) == 1
    assert row["test_accuracy"].item() == pytest.approx(runs.get_run(trained).test_accuracy)
    assert row["status"].item() == "finished"
    assert len(at.get("plotly_chart")) >= 3  # epoch accuracy, epoch loss, step loss (+ scatter)


def test_compare_filters_hide_the_run(trained: str):
    at = open_page("pages/compare.py")
    at.slider(key="compare_min_accuracy").set_value(100.0).run()
    assert not at.exception
    assert trained not in set(runs_table(at)["id"])
    at.slider(key="compare_min_accuracy").set_value(0.0)
    at.multiselect(key="compare_models").select("linear").run()
    assert trained in set(runs_table(at)["id"])


def test_evaluate_page_shows_the_run(trained: str):
    if not (ROOT / "pages" / "evaluate.py").exists():
        pytest.skip("pages/evaluate.py (another engineer's page) does not exist yet")
    at = open_page("pages/evaluate.py", run=trained)
    page_text = texts(at.markdown) + texts(at.caption) + texts(at.selectbox)
    assert trained in page_text


def test_invalid_combination_shows_an_error_naming_the_field(runs: RunStore):
    count = runs.count()
    at = open_page("pages/train.py")
    at.selectbox(key="train_model").set_value("cnn-small")
    at.selectbox(key="train_optimizer").set_value("scratch-sgd")
    launch(at)
    assert "optimizer" in texts(at.error)
    assert runs.count() == count and "run" not in at.query_params


def test_queue_refusal_shows_an_error_not_an_exception(monkeypatch, runs: RunStore):
    from pages.common import get_queue

    count = runs.count()
    at = open_page("pages/train.py")  # creates the shared queue if no test did yet
    monkeypatch.setattr(get_queue(), "limits", Limits(max_epochs=1))  # the queue's caps, not the form's
    fill_linear(at, epochs=2)
    launch(at)
    assert "epochs" in texts(at.error) and "limit" in texts(at.error)
    assert runs.count() == count


def test_deployment_caps_bound_the_widgets(monkeypatch):
    monkeypatch.setenv("MNIST_MAX_EPOCHS", "1")
    monkeypatch.setenv("MNIST_MAX_BATCH_SIZE", "128")
    at = open_page("pages/train.py")
    assert at.number_input(key="train_epochs").max == 1
    assert at.number_input(key="train_batch_size").max == 128


def test_read_only_mode_disables_launch(monkeypatch):
    monkeypatch.setenv("MNIST_READ_ONLY", "1")
    at = open_page("pages/train.py")
    assert at.form_submit_button[0].disabled
    assert "read-only" in texts(at.info)


def test_live_view_of_a_run_trained_elsewhere(runs: RunStore):
    """A run another process trains (say the CLI, or another server's worker): progress comes
    from its stored steps, a tab with no remembered run is offered to attach to it, and Stop
    reaches that process through the store."""
    run_id = "linear-livecli"
    config = TrainConfig(model="linear", epochs=2, batch_size=600, lr=0.1, val_split=0.1).to_dict()
    runs.create_run(run_id, config, status="running")
    try:
        # 54,000 training images / 600 = 90 steps per epoch, 180 in all; step 45 is a quarter.
        runs.add_steps(run_id, [{"step": s, "epoch": 1, "loss": 2.0 / s, "accuracy": 0.5, "lr": 0.1,
                                 "images_per_s": 3000.0, "elapsed": s / 10, "total": 180} for s in (15, 30, 45)])
        at = open_page("pages/train.py", teacher=True)  # the run has no owner: only the teacher may stop it
        assert run_id in texts(at.info)
        at.button(key="attach_active").click().run()
        assert not at.exception
        assert at.query_params["run"] == run_id and run_id in texts(at.subheader)
        bar = at.progress[0]
        assert bar.value == 25 and "epoch 1 of 2" in bar.text and "3,000 images/s" in bar.text
        assert "step 45 of 180" in bar.text
        charts = [c.key for c in at.get("plotly_chart")]  # per step; no epoch ended yet, so no epoch charts
        assert charts == [f"steps_loss_{run_id}", f"steps_accuracy_{run_id}", "finished_runs"]
        at.button(key=f"stop_{run_id}").click().run()
        assert not at.exception and runs.stop_requested(run_id)
    finally:
        runs.set_status(run_id, "cancelled")
        runs.delete_run(run_id)


def test_compare_refuses_to_delete_an_active_run(runs: RunStore):
    runs.enqueue("linear-activedelete", TrainConfig(model="linear").to_dict(), "Ada", worker=(os.getpid(), "elsewhere"))
    try:
        at = open_page("pages/compare.py")
        at.selectbox(key="compare_delete_target").set_value("linear-activedelete")
        at.checkbox(key="compare_delete_confirm").check().run()
        at.button(key="compare_delete").click().run()
        assert not at.exception
        assert "Not deleted" in texts(at.error) and "Stop it" in texts(at.error)
        assert runs.get_run("linear-activedelete") is not None
    finally:
        runs.set_status("linear-activedelete", "cancelled")
        runs.delete_run("linear-activedelete")


def ended_run(runs: RunStore, run_id: str, owner: str) -> None:
    runs.enqueue(run_id, TrainConfig(model="linear").to_dict(), owner)
    runs.request_stop(run_id)  # a queued run stops at once: cancelled


def test_compare_deletes_an_ended_run(runs: RunStore):
    ended_run(runs, "linear-todelete", "Ada")
    at = open_page("pages/compare.py")
    at.selectbox(key="compare_delete_target").set_value("linear-todelete")
    assert at.button(key="compare_delete").disabled  # not confirmed yet
    at.checkbox(key="compare_delete_confirm").check().run()
    at.button(key="compare_delete").click().run()
    assert not at.exception
    assert runs.get_run("linear-todelete") is None
    assert "Deleted run" in texts(at.success)


def test_compare_offers_only_ones_own_runs_for_deletion_and_the_teacher_any(runs: RunStore):
    ended_run(runs, "linear-adas", "Ada")
    ended_run(runs, "linear-bobs", "Bob")
    try:
        bob = open_page("pages/compare.py", person="Bob")
        assert bob.selectbox(key="compare_delete_target").options == ["linear (linear-bobs)"]  # name (id)
        bob.segmented_control(key="compare_scope").set_value("mine").run()
        shown = runs_table(bob)
        assert set(shown["id"]) == {"linear-bobs"}
        teacher = open_page("pages/compare.py", person="Tess", teacher=True)
        assert {"linear (linear-adas)", "linear (linear-bobs)"} <= set(teacher.selectbox(key="compare_delete_target").options)
        teacher.selectbox(key="compare_delete_target").set_value("linear-adas")
        teacher.checkbox(key="compare_delete_confirm").check().run()
        teacher.button(key="compare_delete").click().run()
        assert not teacher.exception and runs.get_run("linear-adas") is None
    finally:
        for run_id in ("linear-adas", "linear-bobs"):
            if runs.get_run(run_id):
                runs.delete_run(run_id)


def test_second_session_joins_a_running_run_and_only_its_owner_can_stop_it(runs: RunStore):
    first = open_page("pages/train.py")
    fill_linear(first, epochs=20)  # long enough to be still active when the others launch
    launch(first)
    run_id = first.query_params["run"]
    other = open_page("pages/train.py", person="Bob")
    fill_linear(other, epochs=20)
    launch(other)
    assert "Someone already launched exactly these settings" in texts(other.info)
    assert other.query_params["run"] == run_id
    assert not [b for b in other.button if b.key == f"stop_{run_id}"]  # not Bob's run: no Stop
    second = open_page("pages/train.py")  # Ada in another tab
    fill_linear(second, epochs=20)
    launch(second)
    second.button(key=f"stop_{run_id}").click().run()
    assert not second.exception
    assert wait_until_ended(runs, run_id) == "cancelled"
    second.run()
    assert "Cancelled" in texts(second.warning)


def test_an_anonymous_visitor_gives_a_name_with_the_first_launch(runs: RunStore):
    count = runs.count()
    at = open_page("pages/train.py", person=None)
    fill_linear(at, epochs=3)
    launch(at)  # name left empty
    assert "Type a name first" in texts(at.error)
    assert runs.count() == count
    token_for("Bob")  # another browser holds the name Bob
    at.text_input(key="train_visitor_name").input("Bob")
    launch(at)
    assert "already uses the name Bob" in texts(at.error) and runs.count() == count
    at.text_input(key="train_visitor_name").input("  Grace   Hopper ")
    launch(at)
    run_id = at.query_params["run"]
    assert runs.get_run(run_id).owner == "Grace Hopper"
    assert "Grace Hopper" in texts(at.text)  # the sidebar now says who you are
    at.run()
    assert not [w for w in at.text_input if w.key == "train_visitor_name"]  # asked once
    at.button(key=f"stop_{run_id}").click().run()
    assert wait_until_ended(runs, run_id) in ("cancelled", "finished")


def test_a_crafted_run_link_is_shown_as_text_not_markdown():
    crafted = "x](https://evil.example/a.png) ![img](https://evil.example/i.png"
    at = open_page("pages/train.py", run=crafted)
    assert not at.exception
    rendered = texts(at.markdown) + texts(at.warning) + texts(at.info) + texts(at.caption)
    assert "evil.example" not in rendered  # nothing the visitor typed reaches markdown
    assert any(crafted[:40] in str(t.value) for t in at.text)


def test_a_recipe_button_fills_the_form_with_the_tuned_settings():
    from mnist_core.engine.config import RECIPES

    at = open_page("pages/train.py")
    at.button(key="recipe_cnn-fast").click()
    at.run()
    assert not at.exception
    recipe = RECIPES["cnn-fast"].config
    assert at.selectbox(key="train_model").value == "cnn-fast"
    assert at.number_input(key="train_batch_size").value == recipe.batch_size
    assert at.selectbox(key="train_schedule").value == recipe.schedule
