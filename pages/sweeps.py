"""Sweeps: launch several values per setting at once, then explore them with sliders.

Every member is an ordinary run in the store: moving a slider only reads what was stored
(curves, confusion matrix, test accuracy), it never retrains.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from mnist_core.service import access, sweeps
from mnist_core.settings import ConfigError
from mnist_core.engine.config import TrainConfig
from mnist_core.service.history import accuracy_range, format_duration, step_frame, thin
from mnist_core.engine.models import MODELS
from mnist_core.engine.naming import format_value, run_colour
from mnist_core.service.results import load_evaluation
from mnist_core.service.sweeps import LABELS, SweepPlan
from mnist_core.teach.text import plain, report
from mnist_core.teach.glossary import FIELD_TERMS
from pages.common import claim_for_session, current_person, get_queue, get_store, help_text, limits, load_data

REFRESH_KEY = "sweep_refresh"  # session_state: the explorer re-reads the store every few seconds
SWEEP_KEY = "sweep_shown"  # session_state: the sweep this tab explores (mirrored in ?sweep=)
FLASH_KEY = "sweep_flash"  # session_state: the launch's confirmation, kept until a run completes with it
# What the launch form offers per setting (learning rates log-spaced: each about 3x the last).
CHOICES = {
    "model": list(MODELS),
    "lr": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
    "batch_size": [32, 64, 128, 256, 512],
    "epochs": [1, 2, 3, 5, 10],
    "optimizer": ["adam", "adamw", "sgd", "rmsprop", "scratch-sgd"],
    "schedule": ["none", "step", "plateau", "onecycle"],
    "dropout": [0.0, 0.1, 0.25, 0.5],
    "weight_decay": [0.0, 1e-5, 1e-4, 1e-3],
    "augment": ["none", "affine"],
    "seed": [0, 1, 2, 3, 4],
}
DEFAULTS = {**TrainConfig().to_dict(), "model": "linear"}  # a linear member trains in about a second
FIRST_SHOWN = ("model", "lr", "batch_size", "epochs", "seed")  # the rest sit under "More settings"


@st.cache_data(show_spinner=False, max_entries=256)
def cached_steps(run_id: str, version: tuple) -> pd.DataFrame:
    """A member's per-step curve, read once per version (status, epochs, finish time)."""
    return thin(step_frame(get_store().steps(run_id), alpha=0.2))


@st.cache_data(show_spinner=False, max_entries=64)
def cached_confusion(run_id: str, finished: float | None) -> np.ndarray | None:
    data = load_data()
    if data is None or not get_store().has_tensors(run_id, "evaluation"):
        return None
    return load_evaluation(get_store(), run_id, data).confusion


def version(record) -> tuple:
    return (record.status, record.epochs_done, record.finished) if record else ()


def setting_help(key: str) -> str | None:
    """The glossary's explanation of a swept setting, as its field's tooltip."""
    term = FIELD_TERMS.get(key)
    return help_text(term) if term else "Which network to train: see the Train page for what each one is."


def launch_form() -> None:
    """Several values per setting; the member count updates as values are picked."""
    person = current_person()
    st.write(
        "Pick one or more values for each setting. **Grid** trains every combination; **random** "
        "trains a few combinations chosen at random, which covers more ground when many settings "
        "vary. Members trained before (by anyone) are reused at once."
    )
    axes: dict[str, list] = {}
    columns = st.columns(len(FIRST_SHOWN))
    for column, key in zip(columns, FIRST_SHOWN):
        axes[key] = column.multiselect(LABELS[key], CHOICES[key], default=[DEFAULTS[key]], key=f"sweep_form_{key}",
                                       format_func=lambda v, k=key: format_value(k, v), help=setting_help(key))
    with st.expander("More settings to vary"):
        more = [k for k in sweeps.SWEEPABLE if k not in FIRST_SHOWN]
        for column, key in zip(st.columns(len(more)), more):
            axes[key] = column.multiselect(LABELS[key], CHOICES[key], default=[DEFAULTS[key]], help=setting_help(key),
                                           key=f"sweep_form_{key}", format_func=lambda v, k=key: format_value(k, v))
    left, middle, right = st.columns(3)
    mode = left.radio("Members", ["grid", "random"], horizontal=True, key="sweep_form_mode",
                      format_func={"grid": "Every combination (grid)", "random": "Random samples"}.get)
    samples = middle.number_input("How many random members", 1, limits().max_sweep, 8, key="sweep_form_samples",
                                  disabled=mode != "random")
    early = right.checkbox(
        "Stop hopeless members early", key="sweep_form_early",
        help="Successive halving (ASHA's rule): after epochs 1, 2, 4, … a member goes on only if its "
             "validation accuracy is in the better half of the members that got that far. Saves time "
             "when members train for several epochs; 1-epoch members are never stopped.",
    )
    name = st.text_input("Sweep name (optional)", max_chars=sweeps.NAME_MAX, key="sweep_form_name")
    typed = None
    if not person.known:
        typed = st.text_input("Your name (shown on your runs)", max_chars=access.NAME_MAX, key="sweep_visitor_name")

    swept = {k: v for k, v in axes.items() if len(v) > 1}
    base = {k: v[0] for k, v in axes.items() if len(v) == 1}
    empty = [LABELS[k] for k, v in axes.items() if not v]
    if empty:
        st.warning(f"Pick at least one value for: {', '.join(empty)}.")
        return
    try:
        plan = SweepPlan(TrainConfig(**base), swept, mode=mode, samples=int(samples))
        size = plan.size() if swept else 1
    except ConfigError as err:
        st.error(f"These settings cannot train: {plain(err)}")
        return
    if not swept:
        st.info("Pick two or more values for at least one setting: a sweep varies something.")
        return
    st.caption(f"This sweep has {size} member(s), at most {limits().max_sweep} allowed.")
    if st.button(f"Launch {size} runs", type="primary", key="sweep_form_launch"):
        try:
            person = claim_for_session(typed) if typed is not None else person
            launched = get_queue().submit_sweep(plan, person, name=name, early_stop=early)
        except (ConfigError, access.NotAllowed) as err:  # limits, names, read-only: nothing was queued
            st.error(f"Cannot launch: {plain(err)}")
            return
        show(launched.sweep_id)
        reused = len(launched.outcomes) - launched.queued
        st.session_state[FLASH_KEY] = (f"Sweep launched: {launched.queued} run(s) queued"
                                           + (f", {reused} reused or already training." if reused else "."))
        st.rerun()


def show(sweep_id: str) -> None:
    st.session_state[SWEEP_KEY] = sweep_id
    st.query_params["sweep"] = sweep_id
    st.query_params.pop("tab", None)  # the page opens on the explorer again


def pick_sweep() -> str | None:
    """The sweep to explore: this tab's, the URL's, else the newest."""
    listed = get_store().list_sweeps()
    if not listed:
        return None
    by_id = {s.id: s for s in listed}
    wanted = st.session_state.get(SWEEP_KEY) or st.query_params.get("sweep")
    if wanted is not None and wanted not in by_id:
        st.warning("The sweep in this link does not exist (any more); showing the newest one.")
        st.text(f"Link value: {str(wanted)[:80]}")
        wanted = None
    ids = list(by_id)
    chosen = st.selectbox("Sweep", ids, index=ids.index(wanted) if wanted else 0, key="sweep_pick",
                          format_func=lambda i: f"{by_id[i].name} · by {by_id[i].owner}")
    if chosen != wanted:
        show(chosen)
    return chosen


def status_panel(state: sweeps.SweepState, names: dict[str, str]) -> None:
    person = current_person()
    st.progress(state.ended / max(state.total, 1),
                text=f"{state.finished} of {state.total} finished" + (" · training" if state.active else ""))
    best = state.best()
    if best is not None:
        record = state.runs[best.run_id]
        st.text(f"Best so far: {names[best.run_id]}: {record.test_accuracy:.2%} test accuracy "
                f"in {format_duration(record.duration_s)}.")
    stopped_early = [m for m in state.members if state.status(m) == "stopped early"]
    if stopped_early:
        st.caption(f"{len(stopped_early)} member(s) stopped early by successive halving: they were in the "
                   "worse half after an epoch, so their time went to the better ones.")
    if sweeps.may_stop(person, state, limits()) and st.button("Stop the whole sweep", key=f"sweep_stop_{state.sweep.id}"):
        try:
            count = get_queue().stop_sweep(state.sweep.id, person)
            st.toast(f"Stopping {count} run(s).")
        except (access.NotAllowed, ConfigError) as err:
            st.error(plain(err))


def explorer(state: sweeps.SweepState, frame: pd.DataFrame, names: dict[str, str]) -> None:
    axes = state.swept()
    st.subheader("Explore with the sliders")
    st.write("Each slider moves through exactly the values this sweep tried. The curves belong to the "
             "member with those values; its neighbours along the slider you moved last are drawn faint.")
    sid = state.sweep.id
    params = {}
    for key, values in axes.items():
        params[key] = st.select_slider(LABELS[key], options=values, key=f"sweep_{sid}_{key}",
                                       format_func=lambda v, k=key: format_value(k, v))
    last = st.session_state.get(f"sweep_{sid}_last", {})
    moved = next((k for k in axes if last.get(k) != params[k] and k in last), None)
    moved = moved or st.session_state.get(f"sweep_{sid}_moved") or next(iter(axes))
    st.session_state[f"sweep_{sid}_last"], st.session_state[f"sweep_{sid}_moved"] = params, moved
    member = state.find(params)
    if member is None:
        st.info("No member has exactly these values (random samples cover only part of the grid). "
                "Move a slider to another combination.")
        return
    others = sweeps.neighbours(state, params, moved)
    st.text(sweeps.difference(params, others, moved))
    record = state.runs.get(member.run_id)
    status = state.status(member)
    left, right = st.columns([2, 1])
    with left:
        figure_loss, figure_acc = go.Figure(), go.Figure()
        for other in [*others, member]:
            steps = cached_steps(other.run_id, version(state.runs.get(other.run_id)))
            if steps.empty:
                continue
            # x in epochs (step / steps per epoch), so members with other batch sizes line up
            epochs = state.runs[other.run_id].config.get("epochs", 1)
            x = steps["step"] * epochs / steps["total"].astype(float) if steps["total"].notna().all() else steps["step"]
            main = other is member
            style = {"color": run_colour(other.run_id), "width": 3 if main else 1.5}
            for figure, column in ((figure_loss, "loss_smooth"), (figure_acc, "accuracy_smooth")):
                if column not in steps:
                    continue
                figure.add_scatter(x=x, y=steps[column], mode="lines", name=names[other.run_id],
                                   line=style, opacity=1.0 if main else 0.35)
        figure_loss.update_yaxes(type="log", title="loss", tickformat=".3~g")
        figure_acc.update_yaxes(title="accuracy", tickformat=".0%")
        for figure, title in ((figure_loss, "Training loss per step (smoothed)"),
                              (figure_acc, "Training accuracy per step (smoothed)")):
            figure.update_xaxes(title="epochs of training")
            figure.update_layout(title=title, height=300, margin={"t": 40, "b": 10},
                                 legend={"orientation": "h", "y": -0.3})
            st.plotly_chart(figure, key=f"sweep_curve_{title}")
        st.caption("Smoothed: " + help_text("ema"))
    with right:
        if record is not None and record.test_accuracy is not None:
            best = frame["test_accuracy"].max()
            gap = record.test_accuracy - best
            st.metric("Test accuracy", f"{record.test_accuracy:.2%}",
                      delta=f"{gap:+.2%} vs the sweep's best" if gap < 0 else "the sweep's best", delta_color="normal" if gap < 0 else "off")
        else:
            st.metric("Test accuracy", "—")
            st.text(f"Status: {status}")
        confusion = cached_confusion(member.run_id, record.finished if record else None) if record else None
        if confusion is not None:
            heat = go.Figure(go.Heatmap(z=confusion, x=list(range(10)), y=list(range(10)), colorscale="Blues",
                                        showscale=False, hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"))
            heat.update_yaxes(autorange="reversed", title="true digit", dtick=1)
            heat.update_xaxes(title="predicted digit", dtick=1)
            heat.update_layout(title="Confusion matrix", height=330, margin={"t": 40, "b": 10})
            st.plotly_chart(heat, key="sweep_confusion")
            st.caption(help_text("confusion_matrix"))
        st.page_link("pages/evaluate.py", label="Open this member in Evaluate", icon=":material/analytics:",
                     query_params={"run": member.run_id})


def overview(state: sweeps.SweepState, frame: pd.DataFrame) -> None:
    axes = state.swept()
    st.subheader("All members at once")
    scored = frame.dropna(subset=["test_accuracy"])
    if scored.empty:
        st.info("No member has finished yet; the overview fills in as they do.")
        return
    dimensions = []
    for key, values in axes.items():
        codes = {v: i for i, v in enumerate(values)}
        dimensions.append({"label": LABELS[key], "values": scored[key].map(codes), "tickvals": list(codes.values()),
                           "ticktext": [format_value(key, v) for v in values]})
    dimensions.append({"label": "test accuracy", "values": scored["test_accuracy"],
                       "range": accuracy_range(scored["test_accuracy"]), "tickformat": ".1%"})
    parallel = go.Figure(go.Parcoords(line={"color": scored["test_accuracy"], "colorscale": "Viridis",
                                            "showscale": True, "colorbar": {"tickformat": ".1%"}},
                                      dimensions=dimensions))
    parallel.update_layout(height=380, margin={"t": 100, "l": 60, "r": 60},
                           title="Each line is one finished member; drag along an axis to filter")
    st.plotly_chart(parallel, key="sweep_parallel")
    if len(axes) < 2:
        return
    keys = list(axes)
    left, right = st.columns(2)
    x = left.selectbox("Across", keys, index=0, format_func=LABELS.get, key=f"sweep_heat_x_{state.sweep.id}")
    y = right.selectbox("Down", [k for k in keys if k != x], format_func=LABELS.get, key=f"sweep_heat_y_{state.sweep.id}")
    fixed = {k: st.session_state.get(f"sweep_{state.sweep.id}_{k}", axes[k][0]) for k in keys}
    grid = sweeps.accuracy_grid(frame, x, y, fixed)
    heat = go.Figure(go.Heatmap(
        z=grid.values, x=[format_value(x, v) for v in grid.columns], y=[format_value(y, v) for v in grid.index],
        colorscale="Viridis", text=[[("" if v != v else f"{v:.2%}") for v in row] for row in grid.values],
        texttemplate="%{text}", colorbar={"tickformat": ".1%"}, hoverongaps=False,
    ))
    heat.update_xaxes(title=LABELS[x], type="category")
    heat.update_yaxes(title=LABELS[y], type="category")
    held = [sweeps.setting_text(k, v) for k, v in fixed.items() if k not in (x, y)]
    heat.update_layout(height=360, margin={"t": 50},
                       title="Test accuracy" + (f" (with {', '.join(held)}: the sliders' values)" if held else ""))
    st.plotly_chart(heat, key="sweep_heat")


st.title("Sweeps")
st.write(
    "A sweep trains one run per combination of the values you pick, so you can see what a setting "
    "does by moving a slider instead of launching runs one at a time."
)
flash = st.session_state.get(FLASH_KEY)  # removed at the end of a run that shows it to the end
if flash:
    st.success(flash)
if get_queue().cluster_problem:
    st.warning(get_queue().cluster_problem)



def explore_section() -> None:
    sweep_id = pick_sweep()
    if sweep_id is None:
        st.info("No sweep yet: launch one in the next tab.")
        return
    try:
        state = sweeps.state(get_store(), sweep_id)
    except ConfigError as err:
        st.warning(plain(err))
        return
    except Exception as err:
        st.error(report("Could not read this sweep", err))
        return
    names = sweeps.member_names(state)
    frame = sweeps.members_frame(state)
    status_panel(state, names)
    explorer(state, frame, names)
    overview(state, frame)
    with st.expander("Members as a table"):
        table = frame.assign(time=frame["duration_s"].map(format_duration))
        st.dataframe(table[["name", "status", "test_accuracy", "time", "run_id"]], hide_index=True,
                     column_config={"test_accuracy": st.column_config.NumberColumn("test accuracy", format="percent")})
    if state.active:
        st.caption("Members are training: this view refreshes every few seconds.")
    if st.session_state.get(REFRESH_KEY, False) != state.active:  # start or stop refreshing
        st.session_state[REFRESH_KEY] = state.active
        st.rerun()


EXPLORE, LAUNCH = "Explore a sweep", "Launch a sweep"
opening = LAUNCH if st.query_params.get("tab") == "launch" or not get_store().list_sweeps() else EXPLORE
explore_tab, launch_tab = st.tabs([EXPLORE, LAUNCH], default=opening)
with launch_tab:
    launch_form()
with explore_tab:
    # While members train, the explorer re-reads the store every few seconds on its own.
    st.fragment(explore_section, run_every=3 if st.session_state.get(REFRESH_KEY) else None)()
# The explorer may rerun the page at once (to start refreshing while members train): the
# confirmation stays until a run that was not cut short has shown it.
st.session_state.pop(FLASH_KEY, None)
