"""Train: choose every setting, launch a run on the shared queue, and watch it learn live.

The training itself runs in a warm worker process, never in this script: the page only
submits, polls the run store (every 0.5 s while a run is young, then every 2 s), and remembers
the run in the URL so a reloaded or reopened tab finds its run again.
"""

from __future__ import annotations

import time

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from mnist_core.engine.config import CHOICES, RANGES, RECIPES, TrainConfig
from mnist_core.settings import ConfigError
from mnist_core.engine.device import available_devices
from mnist_core.service.history import (
    CONFIG_COLUMNS, device_label, epoch_frame, metrics_revision, outcome, progress_from_step, runs_frame,
    settings_for_form, step_frame, thin,
)
from mnist_core.service import access
from mnist_core.teach.glossary import ENTRIES, FIELD_TERMS, notes
from mnist_core.service.lifecycle import current
from mnist_core.service.jobs import first_step_soon
from mnist_core.service.waiting import place_text, queue_table
from mnist_core.teach.lessons import what_happened
from mnist_core.engine.models import MODELS
from mnist_core.service.store import ACTIVE, RunRecord
from mnist_core.teach.text import plain
from pages.common import (
    claim_for_session,
    current_person,
    get_queue,
    get_store,
    help_text,
    limits,
    login_configured,
    require_data,
)

RUN_KEY = "train_run"  # session_state: the run this tab watches (mirrored in ?run=)
NOTICE_KEY = "train_notice"  # session_state: (run id, outcome) of this tab's last launch
LAUNCHES_KEY = "train_launches"  # session_state: how many launches this tab made
RUN_SECTION = "train_run_section"  # the container of the watched run, scrolled to after Launch
DEFAULTS = TrainConfig()
SMOOTHING = 0.2  # EMA weight of the newest point; points come every 10 batches: roughly a 50-batch average

data = require_data()
st.title("Train a model")
st.write(
    "Pick a model and its training settings, then launch. Training runs on the server in the "
    "background: you can leave this page, close the tab or come back later, and the run keeps "
    "going. Every setting has a **?** explaining what it does."
)


@st.cache_data(show_spinner=False)
def parameter_count(model: str) -> int:
    return MODELS[model].parameter_count


def remembered_run() -> str | None:
    """The URL wins over the session: a reopened tab has only the URL."""
    return st.query_params.get("run") or st.session_state.get(RUN_KEY)


def remember(run_id: str) -> None:
    st.session_state[RUN_KEY] = run_id
    st.query_params["run"] = run_id


def forget() -> None:
    st.session_state.pop(RUN_KEY, None)
    st.query_params.pop("run", None)


def seed_form(config: dict) -> None:
    """Put a config's values into the form's widgets (before they are drawn). The widgets take
    their values only from session state, so Streamlit never sees two competing defaults."""
    for name, value in settings_for_form(config, limits(), available_devices()).items():
        st.session_state[f"train_{name}"] = value


def settings_form(read_only: bool) -> dict | None:
    """Every TrainConfig field as a widget; the chosen values once Launch is pressed."""
    if "train_model" not in st.session_state:  # first visit, or back from another page
        # A reload or a shared link names a run: the form shows that run's settings, so what is
        # on screen matches; otherwise the defaults.
        run_id = remembered_run()
        watched = current(get_store(), run_id) if run_id else None
        seed_form(watched.config if watched else DEFAULTS.to_dict())
    caps = limits()
    max_epochs = min(int(RANGES["epochs"][1]), caps.max_epochs)
    max_batch = min(int(RANGES["batch_size"][1]), caps.max_batch_size)
    asks_name = not current_person().known and not login_configured()
    st.page_link("pages/sweeps.py", label="Several values at once? Launch a sweep and compare them with sliders",
                 icon=":material/tune:", query_params={"tab": "launch"})
    with st.form("train_form"):
        values: dict = {}
        if asks_name:  # at the point of need: the first Launch also says who launched it
            values["_name"] = st.text_input(
                "Your name (shown on your runs)", max_chars=access.NAME_MAX, key="train_visitor_name",
                help="Every run records who launched it, so you find yours and only you can stop or "
                     "delete them. This browser keeps the name; nobody else on this server can take it.",
            )
        values["model"] = st.selectbox(
            "Model", list(MODELS), key="train_model",
            format_func=lambda name: f"{name} — {MODELS[name].description} ({parameter_count(name):,} parameters)",
            help="Which network to train. " + help_text("parameters") + " " + help_text("convolution"),
        )
        # The terms of the chosen model's description (batch norm, VGG-style…), where they show.
        described = notes(MODELS[values["model"]].description, skip=("parameters", "convolution"))
        if described:
            st.caption(described)
        left, middle, right = st.columns(3)
        with left:
            values["epochs"] = st.number_input(
                "Epochs", 1, max_epochs, key="train_epochs",
                help=help_text("epoch") + (f" This deployment allows at most {max_epochs}." if max_epochs < 100 else ""),
            )
            values["batch_size"] = st.number_input(
                "Batch size", 1, max_batch, step=32, key="train_batch_size",
                help=help_text("batch_size") + (f" This deployment allows at most {max_batch}." if max_batch < 8192 else ""),
            )
            values["lr"] = st.number_input(
                "Learning rate", float(RANGES["lr"][0]), float(RANGES["lr"][1]), step=1e-4, format="%g",
                key="train_lr",
                help=help_text("learning_rate") + " Type any value, e.g. 3e-4; the arrows step by 0.0001.",
            )
            values["optimizer"] = st.selectbox(
                "Optimizer", CHOICES["optimizer"], key="train_optimizer",
                help=help_text("optimizer") + " scratch-sgd works with linear and mlp only.",
            )
            values["momentum"] = st.number_input(
                "Momentum (used by sgd only)", float(RANGES["momentum"][0]), float(RANGES["momentum"][1]),
                step=0.05, format="%g", key="train_momentum",
                help=help_text("momentum") + " Only the sgd optimizer uses it; the others ignore this field.",
            )
        with middle:
            values["weight_decay"] = st.number_input(
                "Weight decay", 0.0, float(RANGES["weight_decay"][1]), step=1e-4, format="%g",
                key="train_weight_decay", help=help_text("weight_decay"),
            )
            values["dropout"] = st.slider(
                "Dropout", 0.0, float(RANGES["dropout"][1]), step=0.05, key="train_dropout",
                help=help_text("dropout"),
            )
            values["schedule"] = st.selectbox(
                "Learning-rate schedule", CHOICES["schedule"], key="train_schedule", help=help_text("schedule") + " " + help_text("learning_rate"),
            )
            values["augment"] = st.selectbox(
                "Augmentation", CHOICES["augment"], key="train_augment", help=help_text("augment"),
            )
        with right:
            values["val_split"] = st.slider(
                "Validation split", 0.0, float(RANGES["val_split"][1]), step=0.05, key="train_val_split",
                help=help_text("val_split"),
            )
            values["seed"] = st.number_input(
                "Seed", 0, int(RANGES["seed"][1]), key="train_seed", help=help_text("seed"),
            )
            values["device"] = st.selectbox(
                "Device", available_devices(), key="train_device", help=help_text("device"),
            )
            values["precision"] = st.selectbox(
                "Precision", CHOICES["precision"], key="train_precision", help=help_text("precision"),
            )
            values["time_budget_s"] = st.number_input(
                "Time budget (seconds, optional)", 1.0, 86400.0, step=30.0, format="%g",
                placeholder="no limit", key="train_time_budget_s", help=help_text("time_budget_s"),
            )
        launched = st.form_submit_button(
            "Launch training", type="primary", disabled=read_only,
            help="Training is switched off in this read-only demo." if read_only else help_text("cached"),
        )
    with st.expander("What every setting means"):
        st.markdown("\n\n".join(f"**{ENTRIES[FIELD_TERMS[name]].title}**: {ENTRIES[FIELD_TERMS[name]].text}"
                                  for name in CONFIG_COLUMNS if name in FIELD_TERMS))
    return values if launched else None


def launch(values: dict) -> bool:
    """Validate and submit; a bad setting becomes an error naming the field, never a traceback.
    True when the run was submitted."""
    typed = values.pop("_name", None)
    try:
        person = claim_for_session(typed) if typed is not None else current_person()
        submission = get_queue().submit(TrainConfig(**values), person)
    except ConfigError as err:
        detail = str(err).removeprefix(f"{err.field}: ")
        st.error(f"Cannot launch: the setting **{err.field}** is not accepted — {plain(detail)}")
        return False
    except access.NotAllowed as err:
        st.error(f"Cannot launch: {plain(err)}")
        return False
    remember(submission.run_id)
    st.session_state[NOTICE_KEY] = (submission.run_id, submission.outcome)
    st.session_state[LAUNCHES_KEY] = st.session_state.get(LAUNCHES_KEY, 0) + 1
    return True


def scroll_to_run() -> None:
    """Bring the run's section into view once after Launch: it sits below the long form, where
    a visitor would otherwise not see the run start. A script in st.html runs in the page itself;
    the launch number makes each launch's element new, so it runs again; it is drawn only in the
    script run that launched, so later reruns leave the visitor's scrolling alone."""
    st.html(
        f"<script data-launch='{int(st.session_state.get(LAUNCHES_KEY, 0))}'>(() => {{"
        "  let tries = 0;"
        "  const go = () => {"
        f"    const section = document.querySelector('.st-key-{RUN_SECTION}');"
        "    if (section) section.scrollIntoView({behavior: 'smooth', block: 'start'});"
        "    else if (tries++ < 50) setTimeout(go, 100);"
        "  };"
        "  go();"
        "})();</script>",
        unsafe_allow_javascript=True,
    )


def show_notice(record: RunRecord) -> None:
    """What happened at launch: trained before, joined someone's run, or queued."""
    notice = st.session_state.get(NOTICE_KEY)
    if not notice or notice[0] != record.id:
        return
    if notice[1] == "cached":
        st.info(f"**Already trained — showing the stored run, no training needed.** {help_text('cached')}")
    elif notice[1] == "joined":
        st.info(
            "**Someone already launched exactly these settings.** You are now watching that run; "
            "it trains once and everyone sees the same result."
        )
    elif record.active:
        st.success("Launched. You may leave this page: the run keeps training on the server.")


# The figures are cached as shared objects (cache_resource), never modified once built: cache_data
# would hand each poll of each watching tab a copy, unpickled and re-validated by Plotly, about a
# third of a poll's server time.
@st.cache_resource(max_entries=64, show_spinner=False)
def loss_accuracy_step_figures(run_id: str, revision: tuple, active: bool) -> tuple[go.Figure, go.Figure] | None:
    """Per-step loss and accuracy: the raw noisy batch values, faint, and their EMA, bold.

    An active run gets its (empty) axes before its first step: the charts are in place, and the
    browser has loaded its charting code, by the time the first points arrive."""
    frame = thin(step_frame(get_store().steps(run_id), SMOOTHING))  # smoothed over all, drawn thinned
    if frame.empty and not active:
        return None
    figures = []
    steps = frame["step"].to_numpy()
    for metric, title in (("loss", "Training loss per step"), ("accuracy", "Batch accuracy per step")):
        # Built in one constructor call with nested dicts: a training run rebuilds both at every
        # poll, and Plotly's update_layout("xaxis_title"...) path lookups took 3x as long.
        figures.append(go.Figure(
            data=[go.Scatter(x=steps, y=frame[metric].to_numpy(), name="per batch", mode="lines",
                             line={"width": 1, "color": "#94a3d8"}, opacity=0.45),
                  go.Scatter(x=steps, y=frame[f"{metric}_smooth"].to_numpy(), name="smoothed (EMA)", mode="lines",
                             line={"width": 2.5, "color": "#3b5bdb"})],
            layout={"title": {"text": title}, "xaxis": {"title": {"text": "step (batch)"}},
                    "yaxis": {"title": {"text": metric}, **({"tickformat": ".0%"} if metric == "accuracy" else {})},
                    "height": 320, "margin": {"t": 50, "b": 40}, "legend": {"orientation": "h", "y": -0.25}},
        ))
    return figures[0], figures[1]


@st.cache_resource(max_entries=64, show_spinner=False)
def epoch_figures(run_id: str, revision: tuple) -> tuple[go.Figure, go.Figure] | None:
    """Per-epoch loss and accuracy on train, validation and test: the overfitting picture."""
    frame = epoch_frame(get_store().epochs(run_id))
    if frame.empty:
        return None
    colours = {"train": "#3b5bdb", "val": "#f08c00", "test": "#2b8a3e"}
    loss = px.line(frame, x="epoch", y="loss", color="split", markers=True, color_discrete_map=colours,
                   title="Loss per epoch")
    accuracy = px.line(frame, x="epoch", y="accuracy", color="split", markers=True, color_discrete_map=colours,
                       title="Accuracy per epoch")
    accuracy.update_yaxes(tickformat=".1%")
    for figure in (loss, accuracy):
        figure.update_layout(height=320, margin={"t": 50, "b": 40})
        figure.update_xaxes(dtick=1)
    return loss, accuracy


def show_progress(record: RunRecord, last_step: dict | None) -> None:
    """Place in line and estimated start while waiting; a progress bar with epoch, ETA and speed
    while training. Both come from the store, whichever server or worker handles the run."""
    if record.status == "queued":
        place = get_queue().place(record.id)
        if place is None:
            st.info("Queued: waiting for a free trainer.")
            return
        st.info(place_text(place))
        return
    if last_step is None:
        st.progress(0.0, text="Starting: the trainer has taken this run…")
        return
    progress = progress_from_step(last_step, record.config["epochs"])
    st.progress(progress.fraction, text=progress.text())


def show_run(record: RunRecord) -> None:
    """Everything about one run: progress or outcome, then its curves."""
    config = record.config
    st.subheader(f"Run `{record.id}`")
    settings = (f"{config['model']} · {config['epochs']} epoch(s) · batch {config['batch_size']} · "
                f"lr {config['lr']:g} · {config['optimizer']} · status **{record.status}** · device {device_label(record)}")
    st.caption(settings, help=notes(settings) or None)
    st.text(f"Launched by {record.owner or 'an earlier version of this dashboard (no owner recorded)'}")
    last_step = get_store().last_step(record.id)
    if record.active:
        show_progress(record, last_step)
        person = current_person()
        if access.may_manage(person, record) and not limits().read_only and st.button(
            "Stop training", key=f"stop_{record.id}", icon=":material/stop_circle:",
            help="Ask the trainer to stop after the current batch; the run is kept as cancelled.",
        ):
            try:
                get_queue().cancel(record.id, person)
                st.toast("Stop requested.")
            except access.NotAllowed as err:
                st.error(plain(err))
    else:
        level, text = outcome(record)
        getattr(st, level)(text)
        if record.test_accuracy is not None:
            st.metric("Test accuracy", f"{record.test_accuracy:.2%}",
                      help="Share of the 10,000 test images this model classifies correctly.")
            st.page_link("pages/evaluate.py", label="Evaluate this run: confusion matrix, mistakes, per-digit scores",
                         icon=":material/analytics:", query_params={"run": record.id},
                         help=help_text("confusion_matrix"))
        show_lesson(record)
    steps = loss_accuracy_step_figures(record.id, metrics_revision(record, last_step), record.active)
    if steps is not None:
        left, right = st.columns(2)
        left.plotly_chart(steps[0], key=f"steps_loss_{record.id}")
        right.plotly_chart(steps[1], key=f"steps_accuracy_{record.id}")
        st.caption(f"{help_text('ema')} Here each new batch moves it {SMOOTHING:.0%} of the way.")
    if record.status == "queued":
        return
    epochs = epoch_figures(record.id, (record.created, record.epochs_done, record.status))
    if epochs is not None:
        left, right = st.columns(2)
        left.plotly_chart(epochs[0], key=f"epochs_loss_{record.id}")
        right.plotly_chart(epochs[1], key=f"epochs_accuracy_{record.id}")
        st.caption(help_text("train_accuracy"))
    elif record.active:
        st.caption("Per-epoch train / validation / test curves appear after the first epoch.")


def show_lesson(record: RunRecord) -> None:
    """What just happened, in a few sentences from the run's own epochs (finished or diverged).
    They quote only numbers and fixed names, and are escaped anyway: never a visitor's text."""
    if record.status not in ("finished", "diverged"):
        return
    sentences = what_happened(get_store().epochs(record.id), record.config, record)
    if sentences:
        with st.container(border=True, key="train_lesson"):
            st.markdown("**What just happened**")
            st.markdown("\n".join(f"- {plain(sentence, limit=600)}" for sentence in sentences))


def show_queue() -> None:
    """Who is training now and who waits, in turn, with each run's estimated start (from the
    speed finished runs measured and the work ahead of it)."""
    rows = queue_table(get_store(), limits().max_concurrent)
    if not rows:
        return
    st.subheader("The queue")
    st.dataframe(rows, hide_index=True, width="stretch")


@st.cache_resource(max_entries=16, show_spinner=False)
def finished_runs_figure(revision: tuple) -> go.Figure:
    """Every finished run on this server: test accuracy against training time, one colour per
    model. The target to beat, and your run's place once it ends. Drawn (empty axes on a new
    server) from the first visit, so the charting code is loaded before Launch is pressed."""
    frame = runs_frame(get_store().list_runs(("finished",)))
    frame = frame.dropna(subset=["test_accuracy", "duration_s"])
    figure = px.scatter(
        frame, x="duration_s", y="test_accuracy", color="model", log_x=True,
        hover_data={"id": True, "epochs": True, "batch_size": True, "lr": ":g", "optimizer": True},
        labels={"duration_s": "training time (s, log scale)", "test_accuracy": "test accuracy"},
        title="Finished runs on this server: accuracy against training time",
    )
    figure.update_yaxes(tickformat=".2%")
    figure.update_layout(height=340, margin={"t": 50, "b": 40})
    if frame.empty:
        figure.add_annotation(text="No finished runs yet: the first one appears here.", showarrow=False,
                              xref="paper", yref="paper", x=0.5, y=0.5)
    return figure


FIRST_POLL_S = 0.5  # while a run is young: its first points and a short run's end show at once
FAST_WINDOW_S = 5.0  # how long a run counts as young, from the trainer's start
POLL_S = 2.0  # then: measured, each poll costs the server ~85 ms per watching tab (figures sent)


def young(record: RunRecord, last_step: dict | None) -> bool:
    """Whether to poll at the fast pace: no step drawn yet, or the run started moments ago (a
    one-epoch linear run ends within 2 s, which the slow pace would show up to 2 s late)."""
    return last_step is None or (record.started is not None and time.time() - record.started < FAST_WINDOW_S)


def poll_live_run(run_id: str, fast: bool) -> None:
    """Re-read the store while the run is active: every FIRST_POLL_S while it is young, then
    every POLL_S (often enough to look live, rarely enough that a class of watching tabs leaves
    the trainer its CPU). When the run ends, or stops being young, rerun the whole page, which
    draws the final view once or polls at the slower pace."""
    record = current(get_store(), run_id)
    if record is None or not record.active:
        st.rerun()
    if fast and not young(record, get_store().last_step(run_id)):
        st.rerun()
    show_run(record)


@st.fragment(run_every=FIRST_POLL_S)
def live_run_fast(run_id: str) -> None:  # one fragment per pace: a fragment is known by its function's name
    poll_live_run(run_id, fast=True)


@st.fragment(run_every=POLL_S)
def live_run_steady(run_id: str) -> None:
    poll_live_run(run_id, fast=False)


read_only = limits().read_only
if read_only:
    st.info("This is a read-only demo: launching training is switched off. You can still watch runs "
            "that are already training and compare stored runs.")
recipe_columns = st.columns(len(RECIPES) + 1)
recipe_columns[0].caption("Start from a tuned recipe:")
for column, (name, recipe) in zip(recipe_columns[1:], RECIPES.items()):
    tuned = recipe.config
    column.button(
        f"Recipe: {name}", key=f"recipe_{name}", on_click=seed_form, args=(tuned.to_dict(),),
        help=f"{tuned.epochs} epochs, batch {tuned.batch_size}, {tuned.optimizer} lr {tuned.lr:g} with a "
             f"{tuned.schedule} schedule, augmentation {tuned.augment}. Measured by `python -m mnist_core.bench`.",
    )
    column.caption(recipe.purpose)
values = settings_form(read_only)
launched = values is not None and launch(values)

with st.container(key=RUN_SECTION):
    run_id = remembered_run()
    if launched and run_id:
        first_step_soon(get_store(), run_id)  # then this very rerun draws the first points
    record = current(get_store(), run_id) if run_id else None
    if run_id and record is None:
        st.warning("The run in this link does not exist (it was deleted, or the link is wrong). Launch a new one above.")
        st.text(f"Run in the link: {run_id[:100]}")  # a visitor's value: shown as text, never markdown
        forget()
    if record is None:
        active = get_store().list_runs(ACTIVE)
        if active:
            latest = active[0]
            st.info(f"Run `{latest.id}` is {latest.status} right now.")
            if st.button(f"Watch {latest.id}", key="attach_active", help="Follow this run's progress live here."):
                remember(latest.id)
                st.rerun()
        else:
            st.caption("No run is being watched. Launch one above; its progress appears here.")
    else:
        remember(record.id)  # also puts ?run= back into a URL that lost it
        show_notice(record)
        if record.active:
            (live_run_fast if young(record, get_store().last_step(record.id)) else live_run_steady)(record.id)
        else:
            show_run(record)
        st.button(
            "Copy this run's settings into the form", key="copy_settings", on_click=seed_form, args=(record.config,),
            icon=":material/content_copy:",
            help="Then change one setting and launch again: two runs that differ in one setting show what it does.",
        )
if launched:
    scroll_to_run()

show_queue()
finished = get_store().list_runs(("finished",))
st.plotly_chart(finished_runs_figure(tuple((r.id, r.test_accuracy) for r in finished)), key="finished_runs")

with st.expander("Why? Loss versus accuracy"):
    st.write(help_text("loss_vs_metric"))
with st.expander("Why? Overfitting: train versus validation curves"):
    st.write(help_text("overfitting"))
with st.expander("Why? Softmax and cross-entropy"):
    st.write(help_text("softmax"))
