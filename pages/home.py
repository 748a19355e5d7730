"""Start here: what the dashboard is for, a path through the pages, and the data in numbers."""

from pages.common import help_text, load_data

import streamlit as st

from mnist_core.engine.data import describe_data
from mnist_core.teach.explore import summarise
from mnist_core.teach.glossary import notes

# (page file, label, what the reader learns there), in the suggested order.
PATH = [
    ("pages/dataset.py", "Dataset",
     "Look at the 70,000 handwritten digits and their pixel statistics."),
    ("pages/mean_images.py", "Mean images",
     "The baseline first: how far does 'which average digit is this closest to?' get, "
     "with no training at all?"),
    ("pages/train.py", "Train", "Train a model and watch it learn, live: its errors falling, its accuracy rising."),
    ("pages/evaluate.py", "Evaluate",
     "Which digits a trained model mixes up, how well it reads each digit, and its worst mistakes."),
    ("pages/compare.py", "Compare", "Put runs side by side to see what each setting changed."),
    ("pages/draw.py", "Draw", "Write a digit yourself and see what a trained model thinks it is."),
    ("pages/inside.py", "Inside the network",
     "What the network looks at: its learned weights, the patterns each layer picks out, and the "
     "pixels that decided its answer."),
]

st.title("Learn deep learning on MNIST")
st.write(
    "MNIST is a set of small pictures of handwritten digits, 0 to 9. Teaching a computer to read "
    "them is the 'hello world' of deep learning: small enough to train in seconds on a laptop, "
    "rich enough to show every idea that matters, from data and baselines to training, "
    "evaluation and what happens inside a network."
)

st.subheader("A suggested path")
for step, (page, label, lesson) in enumerate(PATH, start=1):
    left, right = st.columns([1, 3], vertical_alignment="center")
    with left:
        st.page_link(page, label=f"{step}. {label}", help=notes(label) or None)
    with right:
        st.write(lesson)

with st.expander("Why look at a baseline before training anything?"):
    st.write(help_text("baseline"))

st.subheader("The data in numbers")
data = load_data()
if data is None:
    st.info("MNIST is not loaded yet. The Dataset page explains how to provide it.")
    st.page_link("pages/dataset.py", label="Go to the Dataset page")
else:
    facts = summarise(data)
    cols = st.columns(4)
    cols[0].metric("Training images", f"{facts.train_count:,}", help=help_text("splits"))
    cols[1].metric("Test images", f"{facts.test_count:,}", help=help_text("splits"))
    pixels = f"{facts.height} × {facts.width} = {facts.height * facts.width}"
    cols[2].metric("Pixels per image", pixels)
    cols[3].metric("Classes", f"{facts.classes} digits")
    st.caption(
        f"The classes are nearly balanced: the most common training digit is "
        f"{facts.most_common[0]} ({facts.most_common[1]:,} images), the rarest is "
        f"{facts.least_common[0]} ({facts.least_common[1]:,}). Every pixel is a grey level "
        f"from 0 (black) to 255 (white ink). Data: {describe_data(data)}."
    )
