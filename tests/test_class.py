"""A class on one link, in a real browser: two named students and a teacher.

Ada and Bob are returning visitors (their browsers hold the cookie of the name they gave); the
teacher proves who she is with the deployment's passphrase. Bob is offered nothing to stop or
delete Ada's runs; the teacher stops Ada's run; "my runs" shows one's own; the leaderboard ranks
the students by their best test accuracy. (The core's refusal of a direct call is in test_access.)
"""

from __future__ import annotations

import gc
import os
import re
import time
import weakref

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from mnist_core.bench import serve
from mnist_core.service.lifecycle import run_id_for
from mnist_core.engine.config import TrainConfig
from mnist_core.service.store import RunStore
from tests.browser import (
    chromium,
    exception_texts,
    new_tab,
    page_url,
    screenshot,
    server_paths_in,
    streamlit_server,
    visitor_cookie,
    wait_until_idle,
)

pytestmark = pytest.mark.browser

PASSPHRASE = "owls at noon"
FINISHED = re.compile(r"Finished: test accuracy")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    secrets = tmp_path_factory.mktemp("secrets") / "secrets.toml"
    secrets.write_text(f'teacher_passphrase = "{PASSPHRASE}"\n')
    with streamlit_server(args=["--secrets.files", str(secrets)]) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def tab_of(browser, server, name: str):
    return new_tab(browser, [visitor_cookie(server, name)])


def go(page, server, path: str) -> None:
    page.goto(page_url(server, path))
    wait_until_idle(page, server)
    assert exception_texts(page) == [], server.log_text()
    assert server_paths_in(page.locator("body").inner_text(), server) == []


def launch(page, model: str, seed: int, batch: int | None = None, epochs: int = 1) -> None:
    page.get_by_role("combobox", name="Model").click()
    page.get_by_role("option", name=re.compile(rf"^{model}\b")).click()
    page.get_by_role("spinbutton", name="Epochs").fill(str(epochs))
    if batch:
        page.get_by_role("spinbutton", name="Batch size").fill(str(batch))
    seed_box = page.get_by_role("spinbutton", name="Seed")
    seed_box.fill(str(seed))
    seed_box.press("Tab")
    page.get_by_role("button", name="Launch training").click()


def test_two_students_and_a_teacher(browser, server):
    store = RunStore(server.runs_dir)
    (ada_context, ada), (bob_context, bob) = tab_of(browser, server, "Ada"), tab_of(browser, server, "Bob")
    teacher_context, teacher = tab_of(browser, server, "Tess")
    try:
        # Each student trains a linear run; the sidebar knows them from their browser's cookie.
        for page, seed in ((ada, 11), (bob, 12)):
            go(page, server, "train")
            launch(page, "linear", seed)
            page.get_by_text(FINISHED).wait_for(timeout=90_000)
        assert "Ada" in ada.locator('[data-testid="stSidebar"]').inner_text()
        finished = {store.get_run(run_id_for(TrainConfig(model="linear", seed=s))).owner:
                    store.get_run(run_id_for(TrainConfig(model="linear", seed=s))).test_accuracy for s in (11, 12)}
        assert set(finished) == {"Ada", "Bob"}

        # Ada starts a long run; Bob watching it gets no Stop button.
        go(ada, server, "train")
        launch(ada, "mlp", 13, batch=4, epochs=5)  # minutes: still training when the teacher comes
        ada.get_by_role("button", name="Stop training").wait_for(timeout=30_000)
        long_id = re.search(r"[?&]run=([\w.-]+)", ada.url).group(1)
        go(bob, server, f"train?run={long_id}")
        assert bob.get_by_text("Launched by Ada").count() == 1
        assert bob.get_by_role("button", name="Stop training").count() == 0

        # The teacher gives the passphrase, then stops Ada's run.
        go(teacher, server, f"train?run={long_id}")
        sidebar = teacher.locator('[data-testid="stSidebar"]')
        sidebar.get_by_text("Teacher", exact=True).click()
        box = sidebar.get_by_label("Teacher's passphrase")
        box.fill(PASSPHRASE)
        box.press("Enter")
        sidebar.get_by_text("Tess (teacher)").wait_for(timeout=30_000)
        wait_until_idle(teacher, server)
        teacher.get_by_role("button", name="Stop training").click()
        teacher.get_by_text(re.compile(r"^Cancelled: Stopped by request")).wait_for(timeout=30_000)
        assert store.get_run(long_id).status == "cancelled"
        screenshot(teacher, "class-teacher-stopped")
        # Compare: Bob may delete only his own runs, and "My runs" shows only his.
        go(bob, server, "compare")
        leaderboard = bob.locator('[data-testid="stDataFrame"]').first
        for _ in range(60):  # the grid fills its accessible cells once drawn
            if all(name in (board := leaderboard.text_content()) for name in finished):
                break
            bob.wait_for_timeout(250)
        ranked = sorted(finished, key=finished.get, reverse=True)
        assert board.index(ranked[0]) < board.index(ranked[1]), board
        bob.get_by_text("Delete a run").click()
        options = bob.get_by_role("combobox", name="Run to delete")
        for _ in range(3):  # a click while the expander still opens can leave the list shut: click again
            options.click()
            try:
                bob.get_by_role("option").first.wait_for(timeout=5_000)  # the list opens after the click
                break
            except PlaywrightTimeout:
                bob.keyboard.press("Escape")
        offered = bob.get_by_role("option").all_inner_texts()
        assert offered == [f"linear · seed 12 ({run_id_for(TrainConfig(model='linear', seed=12))})"], offered
        bob.keyboard.press("Escape")
        bob.locator('[data-testid="stMain"]').get_by_text("My runs", exact=True).click()
        runs_table = bob.locator('[data-testid="stDataFrame"]').nth(1)
        for _ in range(60):  # the rerun replaces the table's rows
            if "Ada" not in (table := runs_table.text_content()):
                break
            bob.wait_for_timeout(250)
        assert "linear · seed 12" in table and "Ada" not in table  # runs are listed by name
        screenshot(bob, "class-bob-compare")

    finally:
        for context in (ada_context, bob_context, teacher_context):
            context.close()


def test_a_wrong_setting_stops_the_server_at_start_naming_the_variable():
    """MNIST_MAX_EPOCHS=abc once silently meant 100: now the server stops while it starts, before
    it lets anyone in, and its log (the operator's, never a visitor's) names the variable."""
    if not os.environ.get("MNIST_DATA_DIR"):
        pytest.skip("MNIST_DATA_DIR is not set")
    with pytest.raises(serve.ServerError) as stopped:
        with serve.streamlit_server({"MNIST_MAX_EPOCHS": "abc"}):
            pass
    log = str(stopped.value)
    assert "exited with 3" in log, log
    assert "stopping the server: wrong setting" in log and "MNIST_MAX_EPOCHS" in log and "'abc'" in log, log


def test_the_start_up_heap_is_collected_then_frozen_out_of_the_collectors_sight():
    """Streamlit collects garbage fully after every script run, a watching tab's poll included;
    over the warm server's heap that took 150 ms a time. settle_heap (the end of warm_up) frees
    the start-up's garbage, then freezes the rest, so those collections only look at new objects."""
    from pages.common import settle_heap

    class Node:
        pass

    kept, garbage = Node(), Node()
    garbage.cycle = garbage  # only the cyclic collector can free it
    freed = weakref.ref(garbage)
    del garbage
    try:
        settle_heap()
        assert freed() is None, "garbage from before the freeze must be collected, not frozen"
        assert gc.get_freeze_count() > 0
        assert not any(obj is kept for obj in gc.get_objects()), "a live start-up object is frozen"
    finally:
        gc.unfreeze()
    assert any(obj is kept for obj in gc.get_objects())



def test_a_tab_elsewhere_polls_a_live_run_at_the_pace_the_page_asks(server):
    """The classroom bench's tabs "elsewhere" (RemoteTabs: a watching tab's own messages, no
    browser) must make the server do a real tab's work: run the Train page, then answer the live
    fragment's timed reruns with fresh charts, and follow the page to its slower pace."""
    from mnist_core.settings import Limits
    from mnist_core.service.jobs import submit
    from mnist_core.bench.remote_tabs import RemoteTabs

    store = RunStore(server.runs_dir)
    config = TrainConfig(model="linear", epochs=50, seed=777)
    run_id = submit(store, config, "Teacher's demo", Limits(max_epochs=100)).run_id
    try:
        with RemoteTabs(server.url, "train", f"run={run_id}", 2) as tabs:
            tabs.wait_polling(timeout_s=60)
            answered = tabs.counts["polls answered"]
            wait = 0.0
            while tabs.counts["polls answered"] < answered + 4 and wait < 30:
                time.sleep(0.2)
                wait += 0.2
        assert not tabs.errors, tabs.errors
        assert tabs.counts["page runs"] >= 2, tabs.counts
        assert tabs.counts["polls answered"] >= answered + 4, tabs.counts
        # each poll redraws the step charts: more charts came than the two first page runs sent
        assert tabs.counts["plotly_chart elements"] > 2 * 2, tabs.counts
    finally:
        store.request_stop(run_id)
