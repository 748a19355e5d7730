"""Dataset: browse the images, count the classes, see the pixel statistics behind normalisation."""

from pages.common import help_text, require_data

import streamlit as st

from mnist_core.teach import pictures
from mnist_core.teach.explore import (
    SPLITS,
    class_share_chart,
    page_count,
    page_of,
    select_indices,
    split_arrays,
    upscale,
)
from mnist_core.teach.summaries import split_maps, split_stats

PER_PAGE_CHOICES = (24, 48, 96)
THUMB_SCALE = 3  # 28 px digits shown as 84 px squares


data = require_data()
st.title("The dataset")
st.write(
    "70,000 greyscale pictures of handwritten digits, each 28 × 28 pixels with a label saying "
    "which digit it is. Look at them before training anything: you will see how varied "
    "handwriting is, and which numbers the model will actually be fed."
)
with st.expander("Why a training set and a separate test set?"):
    st.write(help_text("splits"))

st.subheader("Browse the images")
controls = st.columns([2, 3, 1, 1, 1], vertical_alignment="bottom")
split = controls[0].segmented_control(
    "Split", SPLITS, default="train", key="dataset_split",
    format_func=lambda s: f"{s} ({len(split_arrays(data, s)[1]):,})",
    help=help_text("splits"),
) or "train"
chosen = controls[1].multiselect(
    "Digits to show", list(range(10)), placeholder="All digits", key="dataset_digits",
    help="Pick one or more digits to show only those; leave empty to show every digit.",
)
shuffle = controls[2].toggle(
    "Shuffle", value=False, key="dataset_shuffle",
    help="Show the images in a random order instead of the order they are stored in.",
)
seed = controls[3].number_input(
    "Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, disabled=not shuffle,
    key="dataset_seed",
    help="Here the seed fixes the shuffled order: the same seed always shows the same images, "
    "another seed another order. " + help_text("seed"),
)
per_page = controls[4].selectbox(
    "Per page", PER_PAGE_CHOICES, index=1, key="dataset_per_page", help="Images per page."
)

images, labels = split_arrays(data, split)
digits = chosen or list(range(10))
selected = select_indices(labels, digits, int(seed), shuffle)
pages = page_count(len(selected), per_page)
# The key changes with the selection, so a new filter starts again at page 1.
pager, summary = st.columns([1, 4], vertical_alignment="bottom")
page = pager.number_input(
    f"Page (of {pages:,})", min_value=1, max_value=pages, value=1, step=1,
    key=f"dataset_page_{split}_{digits}_{shuffle}_{seed}_{per_page}",
    help="Step through the selected images page by page.",
)
shown = page_of(selected, int(page), per_page)
first = (int(page) - 1) * per_page
summary.caption(
    f"Images {first + 1:,}–{first + len(shown):,} of {len(selected):,} "
    f"({', '.join(map(str, digits)) if chosen else 'all digits'}, {split} split"
    f"{f', shuffled with seed {seed}' if shuffle else ''}). Caption: label · index."
)
if len(shown):
    st.image(
        [upscale(images[i], THUMB_SCALE) for i in shown],
        caption=[f"{int(labels[i])} · #{i}" for i in shown],
    )
else:
    st.info(f"The {split} split has no images of the chosen digits.")

st.subheader("How many of each digit?")
st.image(
    class_share_chart(data.train_labels, data.test_labels),
    caption="Each bar: the share of a split's images that show this digit.",
)
st.caption(
    "The ten digits are close to balanced (about a tenth each), so accuracy is a fair summary: "
    "a model cannot score well by always guessing the most common digit."
)

st.subheader("Pixel statistics and normalisation")
train_mean, train_std = split_stats(data, "train")
test_mean, test_std = split_stats(data, "test")
cols = st.columns(4)
cols[0].metric("Training mean", f"{train_mean:.4f}", help=help_text("normalisation"))
cols[1].metric("Training std", f"{train_std:.4f}", help=help_text("normalisation"))
cols[2].metric("Test mean", f"{test_mean:.4f}")
cols[3].metric("Test std", f"{test_std:.4f}")
st.markdown(
    f"Computed just now from the pixels, scaled from 0–255 to 0–1: the training set has mean "
    f"**{train_mean:.4f}** and standard deviation **{train_std:.4f}**. Every model here feeds "
    f"the network x' = (x − {train_mean:.4f}) / {train_std:.4f}. The test set's values are close "
    "but never used: everything the model knows must come from the training set."
)
with st.expander("Why normalise?"):
    st.write(help_text("normalisation"))

mean_map, std_map = split_maps(data, split)
st.write(
    f"Per pixel, over the {len(images):,} {split} images: where is there usually ink, and where "
    "do the images disagree most? The border is black in nearly every image, so it carries almost "
    "no information."
)
left, right = st.columns(2)
left.image(pictures.heatmap(mean_map, "Mean of each pixel", "gray", low=0.0, legend="mean"))
right.image(pictures.heatmap(std_map, "Standard deviation of each pixel", "viridis", low=0.0, legend="std"))

st.subheader("One image, up close")
index = st.number_input(
    f"Image index in the {split} split", min_value=0, max_value=len(images) - 1,
    value=0, step=1, key=f"dataset_index_{split}",
    help="The number after # under each picture above.",
)
image = images[int(index)].numpy()
st.write(
    f"Image #{index} is labelled **{int(labels[int(index)])}**. This is all the network sees: "
    "784 numbers from 0 (black) to 255 (white)."
)
st.image(pictures.pixel_values(image), caption=f"The 784 values of image #{index}, row by row.")
