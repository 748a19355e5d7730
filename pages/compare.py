"""Compare: every stored run in one table; filter, pick several, overlay their curves.

Comparing runs that differ in one setting is how you learn what that setting does, so the page
also plots any hyperparameter against test accuracy.
"""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from mnist_core.service import access
from mnist_core.teach.glossary import FIELD_TERMS
from mnist_core.service.history import (
    HYPERPARAMETERS,
    accuracy_range,
    curves_frame,
    filter_runs,
    format_duration,
    leaderboard,
    runs_frame,
    visible_runs,
)
from mnist_core.engine.naming import run_colour
from mnist_core.service.store import RunStoreError
from mnist_core.teach.text import plain
from pages.common import current_person, get_store, help_text, limits, scope_owner

TABLE_COLUMNS = (  # results first, so they stay in view on narrow screens
    "name", "owner", "status", "test_accuracy", "model", "epochs", "batch_size", "lr", "optimizer", "weight_decay",
    "dropout", "schedule", "augment", "val_split", "seed", "duration_s", "device_used", "created", "id",
)
SPLIT_NAMES = {"test": "Test", "val": "Validation", "train": "Train"}
HYPERPARAMETER_NAMES = {
    "lr": "Learning rate", "batch_size": "Batch size", "epochs": "Epochs", "weight_decay": "Weight decay",
    "dropout": "Dropout", "momentum": "Momentum", "val_split": "Validation split", "seed": "Seed",
    "duration_s": "Training time (s)", "parameters": "Parameters", "images_per_s": "Images per second",
}
COLOURS = px.colors.qualitative.Bold  # distinct hues: the theme's blues are hard to tell apart
DEFAULT_OVERLAY = 3  # newest runs overlaid when none is selected
FLASH_KEY = "compare_flash"

st.title("Compare runs")
st.write(
    "Every run trained on this server, newest first. Filter the table, tick rows to overlay their "
    "learning curves, and see how a setting relates to test accuracy. Change one setting at a time "
    "to learn what it does."
)


@st.cache_data(show_spinner=False, max_entries=64)
def cached_curves(run_ids: tuple[str, ...], kind: str, alpha: float, versions: tuple) -> pd.DataFrame:
    """Curves of ended runs never change, so they are read once; `versions` (status, epochs,
    timestamps) keys the cache so a retrained or still-running run is read again."""
    return curves_frame(get_store(), list(run_ids), kind, alpha)


flash = st.session_state.pop(FLASH_KEY, None)
if flash:
    st.success(flash)

person = current_person()
pinned = access.pinned_run(get_store())
all_records = get_store().list_runs()
if not all_records:
    st.info("No runs yet. Train one first; it will be listed here.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

# -- leaderboard --------------------------------------------------------------------------------
st.subheader("Leaderboard")
board = leaderboard(runs_frame(all_records))
if board.empty:
    st.caption("Nobody has a finished run with a test accuracy yet.")
else:
    st.caption("Each person's best finished run: highest test accuracy; equal accuracy goes to the shorter training.")
    st.dataframe(board, hide_index=True, key="compare_leaderboard", column_config={
        "rank": st.column_config.NumberColumn("Rank"),
        "person": st.column_config.TextColumn("Who"),
        "test_accuracy": st.column_config.NumberColumn("Test accuracy", format="percent"),
        "duration_s": st.column_config.NumberColumn("Training time (s)", format="%.1f"),
        "model": st.column_config.TextColumn("Model"),
        "settings": st.column_config.TextColumn("Settings that got it"),
        "id": st.column_config.TextColumn("Run"),
    })

st.subheader("All runs")
owner = scope_owner("compare_scope")
records = visible_runs(all_records, owner, pinned)
frame = runs_frame(records)
if frame.empty:
    st.info("You have no runs yet. Launch one on the Train page, or show everyone's runs.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()
if pinned:
    st.caption(f"The first row, {pinned}, is the teacher's reference run.")

# -- filters ------------------------------------------------------------------------------------
left, middle, right = st.columns(3)
models = left.multiselect(
    "Models", sorted(frame["model"].unique()), key="compare_models",
    help="Show only these models. Leave empty to show all.",
)
statuses = middle.multiselect(
    "Status", sorted(frame["status"].unique()), key="compare_statuses",
    help="finished: trained to the end; diverged: the loss became NaN (learning rate too high); "
         "cancelled / interrupted / failed: stopped early. Leave empty to show all.",
)
min_accuracy = right.slider(
    "Minimum test accuracy (%)", 0.0, 100.0, 0.0, step=0.5, key="compare_min_accuracy",
    help="Hide runs below this test accuracy. Above 0, runs without a test accuracy (unfinished) are hidden too.",
)
learning_rates = sorted(frame["lr"].dropna().unique())
lr_range = None
if len(learning_rates) >= 2:
    lr_range = st.select_slider(
        "Learning-rate range", options=learning_rates, value=(learning_rates[0], learning_rates[-1]),
        format_func=lambda lr: f"{lr:g}", key="compare_lr_range",
        help="Only the learning rates of stored runs are offered, so the scale follows them (it is "
             "roughly logarithmic). " + help_text("learning_rate"),
    )
shown = filter_runs(frame, models or None, statuses or None, min_accuracy / 100, lr_range).reset_index(drop=True)

# -- table --------------------------------------------------------------------------------------
st.caption(f"{len(shown)} of {len(frame)} runs match. Tick rows to compare them.")
event = st.dataframe(
    shown[list(TABLE_COLUMNS)], key="compare_table", on_select="rerun", selection_mode="multi-row",
    hide_index=True,
    column_config={
        "name": st.column_config.TextColumn("Run", help="The model and every setting that differs from the defaults."),
        "id": st.column_config.TextColumn("Id", help="Model name plus a hash of every setting: the run's identity."),
        "owner": st.column_config.TextColumn("Who", help="Who launched it."),
        "status": st.column_config.TextColumn("Status"),
        "test_accuracy": st.column_config.NumberColumn("Test accuracy", format="percent"),
        "model": st.column_config.TextColumn("Model"),
        "epochs": st.column_config.NumberColumn("Epochs", help=help_text("epoch")),
        "batch_size": st.column_config.NumberColumn("Batch", help=help_text("batch_size")),
        "lr": st.column_config.NumberColumn("LR", format="%g", help=help_text("learning_rate")),
        "optimizer": st.column_config.TextColumn("Optimizer", help=help_text("optimizer")),
        "weight_decay": st.column_config.NumberColumn("Weight decay", format="%g", help=help_text("weight_decay")),
        "dropout": st.column_config.NumberColumn("Dropout", format="%.2f", help=help_text("dropout")),
        "schedule": st.column_config.TextColumn("Schedule", help=help_text("schedule")),
        "augment": st.column_config.TextColumn("Augment", help=help_text("augment")),
        "val_split": st.column_config.NumberColumn("Val split", format="%.2f", help=help_text("val_split")),
        "seed": st.column_config.NumberColumn("Seed", help=help_text("seed")),
        "duration_s": st.column_config.NumberColumn("Time (s)", format="%.1f"),
        "device_used": st.column_config.TextColumn("Device", help="Where it trained. " + help_text("device")),
        "created": st.column_config.DatetimeColumn("Created (UTC)", format="YYYY-MM-DD HH:mm"),
    },
)
picked = [shown.loc[i, "id"] for i in event.selection.rows if i < len(shown)]
if picked:
    selected = picked
else:
    with_curves = shown[shown["epochs_done"] > 0]
    selected = list(with_curves["id"].head(DEFAULT_OVERLAY))
    if selected:
        st.caption(f"No rows ticked: showing the {len(selected)} newest run(s) with curves.")

# -- curves -------------------------------------------------------------------------------------
st.subheader("Learning curves")
st.caption(help_text("epoch") + " " + help_text("loss_vs_metric"))
if not selected:
    st.info("None of the matching runs has finished an epoch yet, so there are no curves to draw.")
else:
    by_id = {r.id: r for r in records}
    versions = tuple((by_id[i].status, by_id[i].epochs_done, by_id[i].created, by_id[i].finished) for i in selected)
    split = st.radio(
        "Curves measured on", list(SPLIT_NAMES), format_func=SPLIT_NAMES.get, horizontal=True,
        key="compare_split", help=help_text("splits"),
    )
    names = dict(zip(frame["id"], frame["name"]))
    colours = {names[i]: run_colour(i) for i in selected}  # a run keeps its colour on every page
    epochs = cached_curves(tuple(selected), "epoch", 1.0, versions)
    epochs = epochs[epochs["split"] == split].assign(name=lambda f: f["run_id"].map(names))
    if epochs.empty:
        st.warning(f"The selected runs have no {SPLIT_NAMES[split].lower()} measurements "
                   "(a validation split of 0 leaves no validation set).")
    else:
        left, right = st.columns(2)
        accuracy = px.line(epochs, x="epoch", y="accuracy", color="name", markers=True, labels={"name": "run"},
                           color_discrete_map=colours, hover_data={"run_id": True}, title=f"{SPLIT_NAMES[split]} accuracy per epoch")
        accuracy.update_yaxes(tickformat=".1%", range=accuracy_range(epochs["accuracy"]))
        loss = px.line(epochs, x="epoch", y="loss", color="name", markers=True, log_y=True, labels={"name": "run"},
                       color_discrete_map=colours, hover_data={"run_id": True}, title=f"{SPLIT_NAMES[split]} loss per epoch (log scale)")
        loss.update_yaxes(tickformat=".3~g", dtick="D2")  # log ticks at 1, 2, 5 x 10^n as plain numbers
        for figure in (accuracy, loss):
            figure.update_xaxes(dtick=1)
            figure.update_layout(height=340, legend={"orientation": "h", "y": -0.3}, margin={"t": 50})
        left.plotly_chart(accuracy, key="compare_epoch_accuracy")
        right.plotly_chart(loss, key="compare_epoch_loss")

    smoothing = st.slider(
        "Smoothing of the per-step loss", 0.0, 0.99, 0.9, step=0.01, key="compare_smoothing",
        help=help_text("ema") + " This slider sets how much of the previous average each point keeps; "
             "0 shows the raw, noisy batch losses.",
    )
    steps = cached_curves(tuple(selected), "step", round(1 - smoothing, 4), versions)
    if not steps.empty:
        steps = steps.assign(name=steps["run_id"].map(names))
        figure = px.line(steps, x="step", y="loss_smooth", color="name", log_y=True, color_discrete_map=colours,
                         title="Training loss per step (smoothed, log scale)",
                         labels={"loss_smooth": "loss", "step": "step (batch)", "name": "run"})
        figure.update_yaxes(tickformat=".3~g", dtick="D2")
        figure.update_layout(height=360, legend={"orientation": "h", "y": -0.25}, margin={"t": 50})
        st.plotly_chart(figure, key="compare_steps")
        st.caption(help_text("ema") + " Runs with larger batches take fewer steps per epoch, so their lines "
                   "are shorter. " + help_text("batch_size"))

# -- hyperparameter vs accuracy -----------------------------------------------------------------
st.subheader("Which setting matters?")
scored = shown.dropna(subset=["test_accuracy"])
if scored.empty:
    st.info("No matching run has a test accuracy yet.")
else:
    parameter = st.selectbox(
        "Setting on the x axis", HYPERPARAMETERS, format_func=HYPERPARAMETER_NAMES.get, key="compare_parameter",
        help="Each point is one run. A clear trend suggests the setting matters; but check that the "
             "runs differ in this setting only.",
    )
    scatter = px.scatter(
        scored, x=parameter, y="test_accuracy", color="model", hover_name="name", color_discrete_sequence=COLOURS,
        hover_data={"status": True, "epochs": True, "optimizer": True},
        log_x=parameter == "lr", labels={parameter: HYPERPARAMETER_NAMES[parameter], "test_accuracy": "test accuracy"},
        title=f"{HYPERPARAMETER_NAMES[parameter]} versus test accuracy",
    )
    scatter.update_traces(marker={"size": 11, "opacity": 0.8})
    scatter.update_yaxes(tickformat=".1%", range=accuracy_range(scored["test_accuracy"]))
    if parameter == "lr":
        scatter.update_xaxes(dtick=1, tickformat="~g")  # one labelled tick per decade
    scatter.update_layout(height=380, margin={"t": 50})
    st.plotly_chart(scatter, key="compare_scatter")
    if parameter in FIELD_TERMS:
        st.caption(f"**{HYPERPARAMETER_NAMES[parameter]}**: {help_text(FIELD_TERMS[parameter])}")

# -- delete -------------------------------------------------------------------------------------
with st.expander("Delete a run"):
    # Only runs this visitor may delete are offered; the core refuses the others anyway.
    mine = {r.id for r in access.manageable(person, records, limits())}
    candidates = [i for i in (picked or list(shown["id"])) if i in mine]
    if limits().read_only:
        st.caption("This is a read-only demo: nothing can be deleted.")
    elif not candidates:
        st.caption("None of the matching runs is yours to delete: only a run's owner or the teacher may delete it.")
    else:
        label = dict(zip(frame["id"], frame["name"]))
        target = st.selectbox(
            "Run to delete", candidates, key="compare_delete_target", format_func=lambda i: f"{label[i]} ({i})",
            help="Your runs among the ticked rows (or, with none ticked, among the matching runs).",
        )
        row = frame[frame["id"] == target].iloc[0]
        accuracy = "–" if pd.isna(row["test_accuracy"]) else f"{row['test_accuracy']:.2%}"
        st.caption(
            f"{row['model']} · status {row['status']} · test accuracy {accuracy} · "
            f"trained in {format_duration(row['duration_s'])}"
        )
        confirmed = st.checkbox(
            "Yes, delete this run, its curves and its weights for good", key="compare_delete_confirm",
            help="Deleting cannot be undone; launching the same settings again retrains the run.",
        )
        if st.button("Delete run", type="primary", disabled=not confirmed, key="compare_delete"):
            try:
                access.delete_run(get_store(), target, person, limits())
            except access.NotAllowed as err:
                st.error(f"Not deleted: {plain(err)}")
            except RunStoreError:
                st.error("Not deleted: the run is queued or training. Stop it on the Train page, or wait until it ends.")
            else:
                st.session_state[FLASH_KEY] = f"Deleted run {target}."
                st.session_state.pop("compare_delete_confirm", None)
                st.rerun()

# -- the teacher's tools ------------------------------------------------------------------------
if person.teacher and not limits().read_only:
    with st.expander("Teacher: reference run and a fresh start", expanded=False):
        finished = [r.id for r in all_records if r.status == "finished"]
        choice = st.selectbox("Reference run everyone sees first", ["(none)", *finished],
                              index=([None, *finished].index(pinned) if pinned in finished else 0),
                              key="compare_pin_target")
        if st.button("Pin this reference run", key="compare_pin"):
            try:
                access.pin_run(get_store(), None if choice == "(none)" else choice, person, limits())
            except access.NotAllowed as err:
                st.error(plain(err))
            else:
                st.rerun()
        clear = st.checkbox("Yes, stop every run and delete every run except the reference run",
                            key="compare_clear_confirm")
        if st.button("Clear the class", type="primary", disabled=not clear, key="compare_clear"):
            try:
                stopped, deleted = access.clear_class(get_store(), person, limits())
            except access.NotAllowed as err:
                st.error(plain(err))
            else:
                st.session_state[FLASH_KEY] = f"Cleared: {deleted} run(s) deleted, {stopped} stopped."
                st.session_state.pop("compare_clear_confirm", None)
                st.rerun()
