"""Mean images: the average of each digit, and the no-training baseline every model must beat."""

from pages.common import help_text, require_data

import numpy as np
import streamlit as st
import torch

from mnist_core.teach import pictures
from mnist_core.engine.baselines import difference_image
from mnist_core.teach.explore import top_confusions, upscale
from mnist_core.teach.summaries import baseline, digit_means, pair_accuracy

DIGITS = list(range(10))
MEAN_SCALE = 3  # 28 px averages shown as 84 px squares, ten in a row
METRIC_NAMES = {"l2": "L2 (Euclidean)", "l1": "L1 (sum of absolute differences)"}


data = require_data()
st.title("Mean images: the baseline first")
st.write(
    "Before training anything, try the simplest idea that could work: average all training "
    "images of each digit, then label a new image with the digit whose average it is closest to. "
    "Nothing to train, no settings to tune, no GPU. Whatever number this gives is the bar every "
    "model on the following pages has to clear."
)
with st.expander("Why start with a baseline?", expanded=True):
    st.write(help_text("baseline"))

st.subheader("The average of every digit")
means = digit_means(data)
st.image(
    [upscale(np.rint(image * 255), MEAN_SCALE) for image in means],
    caption=[f"digit {digit}" for digit in DIGITS],
)
st.caption(help_text("mean_image"))

st.subheader("Where two digits differ")
left, right, _ = st.columns([1, 1, 3])
a = left.selectbox(
    "Digit A", DIGITS, index=3, key="mean_digit_a",
    help="Red where A usually has ink and B does not.",
)
b = right.selectbox(
    "Digit B", DIGITS, index=7, key="mean_digit_b",
    help="Blue where B usually has ink and A does not.",
)
if a == b:
    st.warning("Choose two different digits to compare.")
else:
    diff = difference_image(torch.from_numpy(means), a, b).numpy()
    limit = float(np.abs(diff).max()) or 1.0
    chart, text = st.columns([3, 2])
    chart.image(pictures.heatmap(diff, f"mean {a} − mean {b}", "blue_red", -limit, limit, "difference"))
    with text:
        st.write(
            f"White pixels look the same in both averages, so they cannot tell {a} from {b}. "
            f"The coloured strokes are the evidence. A classic first classifier uses exactly "
            f"that: among the test images of {a} and {b}, call an image {a} if it is closer to "
            f"the mean {a} than to the mean {b}."
        )
        for metric, name in METRIC_NAMES.items():
            accuracy = pair_accuracy(data, a, b, metric)
            st.metric(
                f"{a} vs {b} accuracy, {name}", f"{accuracy:.2%}",
                help="Share of the test images of these two digits that are closer to their own "
                "digit's mean image than to the other one.",
            )

st.subheader("Nearest mean on all ten digits")
st.write(
    "Now the real task: every one of the 10,000 test images is compared with all ten mean "
    "images, and the nearest wins. 'Nearest' depends on how distance is measured."
)
scores = {metric: baseline(data, metric) for metric in METRIC_NAMES}
cols = st.columns(len(METRIC_NAMES))
for col, (metric, name) in zip(cols, METRIC_NAMES.items()):
    col.metric(
        f"{name} accuracy", f"{scores[metric][0]:.2%}",
        help="L1 adds up the absolute pixel differences; L2 squares them first, so one large "
        "difference counts more than many small ones.",
    )
best = max(scores, key=lambda m: scores[m][0])
st.markdown(
    f"With no training at all, **{METRIC_NAMES[best]}** gets **{scores[best][0]:.2%}** of the test "
    "digits right, far better than the 10% of guessing. That is the bar: a neural network that "
    "does not beat it has learned nothing useful."
)

shown = st.segmented_control(
    "Confusion matrix for", list(METRIC_NAMES), default=best, format_func=METRIC_NAMES.get,
    help=help_text("confusion_matrix"), key="baseline_metric",
) or best
confusion = scores[shown][1]
st.image(
    pictures.confusion_matrix(confusion),
    caption="Rows: the true digit; columns: the digit the nearest mean gave. Colours use a logarithmic "
    "scale, so that a cell with 5 mistakes is visible next to a diagonal cell with 1,000 correct answers.",
)
mixups = top_confusions(confusion, 3)
if mixups:
    st.caption(
        "Most frequent mix-ups: "
        + "; ".join(f"{true} read as {pred} ({count} times)" for true, pred, count in mixups)
        + ". Averages blur away exactly the strokes that tell these digits apart."
    )
with st.expander("How to read a confusion matrix"):
    st.write(help_text("confusion_matrix"))
