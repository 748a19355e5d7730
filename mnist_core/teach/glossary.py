"""Short answers to the questions the seed notes ask, shown where each concept appears.

Kept in the core (plain text, no Streamlit) so the pages, the CLI and the tests share one wording.
Each entry also lists the words that name it on a screen, so a test can check that a page which
uses a term explains it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    title: str  # how a page names the term
    text: str  # one to three plain sentences
    words: tuple[str, ...]  # regular expressions (case-insensitive) that find the term in a page's text


ENTRIES: dict[str, Entry] = {
    "epoch": Entry(
        "Epoch",
        (
            "One epoch is one full pass over the training set: every training image is seen once, in "
            "mini-batches. More epochs give the model more chances to learn, and more chances to "
            "overfit. On MNIST one epoch of a small CNN already reaches about 98%."
        ),
        (r"\bepochs?\b",),
    ),
    "batch_size": Entry(
        "Batch size",
        (
            "How many images are averaged into one gradient step. Larger batches give smoother "
            "gradients and better hardware use (more images per second) but fewer steps per epoch; "
            "smaller batches take more, noisier steps. 64 to 256 is typical for MNIST."
        ),
        (r"\bbatch[ _-]size",),
    ),
    "learning_rate": Entry(
        "Learning rate",
        (
            "How far each step moves the weights along the negative gradient. Too small: training "
            "crawls; too large: the loss jumps around or becomes NaN (the run is marked diverged). Adam "
            "usually wants about 0.001, SGD about 0.01 to 0.1."
        ),
        (r"\blearning[ -]rates?\b",),
    ),
    "optimizer": Entry(
        "Optimizer",
        (
            "The rule that turns gradients into weight updates. SGD subtracts learning rate x gradient "
            "(momentum adds a running average of past steps); Adam, AdamW and RMSprop scale each "
            "weight's step by the history of its gradients, so one learning rate suits all weights. "
            "'scratch-sgd' is the seed notebook's hand-written update: w -= lr * w.grad; w.grad = None."
        ),
        (r"\boptimi[sz]ers?\b",),
    ),
    "momentum": Entry(
        "Momentum",
        (
            "SGD with momentum keeps a running average of past gradients and steps along it, which "
            "smooths noisy mini-batch gradients and speeds up progress along consistent directions."
        ),
        (r"\bmomentum\b",),
    ),
    "weight_decay": Entry(
        "Weight decay",
        (
            "Pulls every weight a little towards zero at each step (L2 regularisation). Smaller weights "
            "give smoother functions that tend to generalise better; too much and the model underfits. "
            "AdamW applies it decoupled from the adaptive step, as intended."
        ),
        (r"\bweight decay\b",),
    ),
    "dropout": Entry(
        "Dropout",
        (
            "During training, randomly zeroes this fraction of a layer's activations, so the network "
            "cannot rely on any single unit. It fights overfitting; it is switched off for evaluation."
        ),
        (r"\bdropout\b",),
    ),
    "schedule": Entry(
        "Learning-rate schedule",
        (
            "How the learning rate changes during training. 'step' multiplies it by 0.7 after every "
            "epoch; 'plateau' halves it when the validation loss stops improving; 'onecycle' warms it "
            "up to the chosen rate then anneals it to almost zero, often the fastest way to a good "
            "model."
        ),
        (r"\bschedules?\b",),
    ),
    "augment": Entry(
        "Augmentation",
        (
            "Data augmentation: each batch is randomly rotated (±10°), scaled (±10%) and shifted (±2 "
            "px), so the model sees new variants of the digits every epoch. It reduces overfitting and "
            "helps with hand-drawn digits that are not perfectly centred."
        ),
        (r"\baugment",),
    ),
    "val_split": Entry(
        "Validation split",
        (
            "The fraction of the 60,000 training images held out as a validation set. The model never "
            "trains on it, so it tells you how well the model generalises while you tune settings, "
            "without touching the test set, which should be looked at only to report the final result."
        ),
        (r"\bvalidation split\b", r"\bval split\b"),
    ),
    "seed": Entry(
        "Seed",
        (
            "The random seed fixes every random choice: initial weights, the validation split, the "
            "order of batches, dropout and augmentation. The same seed and settings give the same run "
            "on the CPU (GPU kernels may be nondeterministic: they can sum in different orders), so a "
            "difference between two runs is caused by the setting you changed, not by luck."
        ),
        (r"\bseeds?\b",),
    ),
    "device": Entry(
        "Device",
        (
            "Where the arithmetic runs. 'auto' picks an NVIDIA GPU (CUDA), then Apple's MPS, then the "
            "CPU. On a GPU training uses mixed precision (bfloat16) for speed."
        ),
        (r"\bdevices?\b",),
    ),
    "precision": Entry(
        "Number precision",
        (
            "How many bits each number gets. 'fp32' computes everything in 32-bit floats; 'bf16' (mixed "
            "precision) does the big matrix and convolution products in 16-bit bfloat16, which is "
            "faster on GPUs and modern CPUs, while weights and the loss stay 32-bit. 'auto' uses bf16 "
            "where it is faster: CUDA GPUs, and convolutional models on CPUs with bf16 support."
        ),
        (r"\bnumber precision\b", r"\bmixed precision\b", r"\bbf16\b", r"\bfp32\b"),
    ),
    "time_budget_s": Entry(
        "Time budget",
        (
            "Optional: stop training after this many seconds, keeping the model as it is then."
        ),
        (r"\btime budget\b",),
    ),
    "normalisation": Entry(
        "Normalisation",
        (
            "Pixels are scaled from 0-255 to 0-1, then standardised with the training set's mean "
            "(0.1307) and standard deviation (0.3081): x' = (x - 0.1307) / 0.3081. Centred inputs of "
            "unit scale keep gradients of similar size across weights, so training converges faster and "
            "one learning rate works for the whole network."
        ),
        (r"\bnormali[sz]",),
    ),
    "splits": Entry(
        "Training, validation and test sets",
        (
            "Train: the images the weights are fitted to. Validation: held-out training images used to "
            "choose settings and spot overfitting. Test: the 10,000 separate images used only to report "
            "how well the final model does on digits it has never seen."
        ),
        (r"\btraining set\b", r"\btest set\b", r"\bvalidation set\b"),
    ),
    "loss_vs_metric": Entry(
        "Loss versus accuracy",
        (
            "The loss (cross-entropy) is what the optimizer minimises: smooth and differentiable. "
            "Accuracy is what people care about, but it changes in jumps and has no useful gradient. A "
            "falling loss usually means rising accuracy, but not always step for step."
        ),
        (r"\bloss(es)?\b",),
    ),
    "softmax": Entry(
        "Softmax and cross-entropy",
        (
            "The model outputs 10 scores (logits). Softmax turns them into probabilities: p_i = "
            "exp(z_i) / sum_j exp(z_j). Cross-entropy is then -log(p of the true digit): 0 when the "
            "model is certain and right, large when it is confident and wrong."
        ),
        (r"\bsoftmax\b", r"\bcross[- ]entropy\b", r"\bprobabilit(y|ies)\b"),
    ),
    "overfitting": Entry(
        "Overfitting",
        (
            "Overfitting is when training accuracy keeps rising while validation accuracy stalls or "
            "falls: the model memorises the training images instead of learning digits. Remedies: more "
            "data or augmentation, dropout, weight decay, fewer epochs (early stopping)."
        ),
        (r"\boverfit",),
    ),
    "confusion_matrix": Entry(
        "Confusion matrix",
        (
            "Row = the true digit, column = the predicted digit; each cell counts test images. The "
            "diagonal holds the correct predictions; bright off-diagonal cells show which digits the "
            "model mixes up (4 vs 9, 3 vs 5, 7 vs 2 are classic)."
        ),
        (r"\bconfusion matri",),
    ),
    "precision_recall": Entry(
        "Precision, recall and F1",
        (
            "Precision of a digit: of the images predicted as that digit, the fraction that really are. "
            "Recall: of the images that really are that digit, the fraction found. F1 is their harmonic "
            "mean."
        ),
        (r"\brecall\b", r"\bF1\b"),
    ),
    "baseline": Entry(
        "Baseline",
        (
            "A baseline is the simplest method that could work, measured before anything clever: here, "
            "classify a digit by which mean image it is closest to. It costs nothing to train and sets "
            "the bar: a neural network that cannot beat it is not learning anything useful."
        ),
        (r"\bbaselines?\b",),
    ),
    "mean_image": Entry(
        "Mean image",
        (
            "The average of all training images of one digit, pixel by pixel: a blurry template of how "
            "that digit is usually written. Bright where most writers put ink."
        ),
        (r"\bmean images?\b",),
    ),
    "activation": Entry(
        "Activation (ReLU)",
        (
            "A nonlinear function (here ReLU: max(0, x)) between layers. Without it, any stack of "
            "linear layers collapses into one linear layer and cannot learn curved decision boundaries."
        ),
        (r"\bactivations?\b", r"\bReLU\b"),
    ),
    "cached": Entry(
        "Already trained",
        (
            "A run's identity is a hash of all its settings. Launching settings that were already "
            "trained shows the stored run at once instead of training the same thing again; change any "
            "setting (even the seed) to train anew."
        ),
        (r"\balready trained\b",),
    ),
    "parameters": Entry(
        "Parameters",
        (
            "Parameters are the numbers training adjusts: every weight and bias of the network. More "
            "parameters can represent more, but take longer per epoch and can memorise the training "
            "set."
        ),
        (r"\bparameters?\b",),
    ),
    "hidden_layer": Entry(
        "Hidden layer",
        (
            "A hidden layer sits between the input and the output: each of its units takes a weighted "
            "sum of the layer below and passes it through an activation. Nobody tells these units what "
            "to detect; training decides. A network of such layers is a multi-layer perceptron (MLP)."
        ),
        (r"\bhidden (layer|unit)s?\b", r"(?-i:\bMLPs?\b)"),
    ),
    "convolution": Entry(
        "Convolution",
        (
            "A convolutional (conv) layer slides small filters, e.g. 3x3 weights, over the image; each "
            "filter responds to one local pattern, such as an edge or a stroke end, wherever it occurs, "
            "and produces one feature map. Pooling then keeps the largest value of each 2x2 patch, "
            "halving the map's size. A CNN is a network built from such layers."
        ),
        (r"\bconv\b", r"\bconvolution", r"(?-i:\bCNNs?\b)", r"\bpooling\b", r"\bfeature maps?\b"),
    ),
    "padding": Entry(
        "Padding",
        (
            "A 3x3 filter needs each pixel's neighbours, so at the border a padded convolution adds a "
            "frame of zeros and its feature map keeps the image's size. An unpadded one skips the "
            "border positions instead: its map shrinks by 2 pixels a layer (28 to 26), each output sees "
            "only real pixels, and there is less to compute, which is why cnn-best leaves its first "
            "four convolutions unpadded (MNIST's digits were scaled into a 20x20 box near the middle)."
        ),
        (r"\bunpadded\b", r"\bpadd(ing|ed)\b"),
    ),
    "batch_norm": Entry(
        "Batch norm",
        (
            "Batch normalisation (batch-norm) rescales each channel's outputs to mean 0 and standard "
            "deviation 1 over the current batch, then lets the network learn a better scale and shift. "
            "It keeps the numbers inside a deep network in a steady range, so it trains faster and "
            "tolerates larger learning rates."
        ),
        (r"\bbatch[- ]?norm",),
    ),
    "vgg": Entry(
        "VGG-style",
        (
            "VGG-style means built like the VGG networks (Oxford, 2014): stacks of small 3x3 "
            "convolutions, with more channels each time a 2x2 pooling halves the image. Simple, regular "
            "and deep enough to be very accurate."
        ),
        (r"\bVGG",),
    ),
    "ema": Entry(
        "Smoothing (EMA)",
        (
            "The smoothed line is an exponential moving average (EMA) of the per-batch values: each "
            "point moves the average a fixed fraction of the way towards the newest batch, so recent "
            "batches weigh most and older ones fade. One batch is noisy; the average shows the trend."
        ),
        (r"\bEMA\b", r"\bmoving average\b", r"\bsmooth(ed|ing)\b"),
    ),
    "train_accuracy": Entry(
        "Training versus test accuracy",
        (
            "Training accuracy is averaged over all the batches of an epoch, while the weights were "
            "still improving, and dropout and augmentation make the training images harder. Validation "
            "and test accuracy are measured once, at the end of the epoch, with dropout off. So after "
            "epoch 1 training accuracy is often below test accuracy (say 90.5% against 98.3%): not a "
            "bug."
        ),
        (r"\btrain(ing)? accuracy\b",),
    ),
    "logits": Entry(
        "Logits (scores)",
        (
            "The model's last layer outputs one score per digit, called a logit: any number, positive "
            "or negative, and the highest one is the answer. Softmax turns the ten scores into "
            "probabilities."
        ),
        (r"\blogits?\b",),
    ),
    "layer_names": Entry(
        "Layer names",
        (
            "Every model here has two parts: `features`, the layers that turn the image into a vector, "
            "and `head`, one linear layer that turns that vector into the 10 digit scores. Layers are "
            "named by position: `features.0` is the first layer inside `features`, `features.4` the "
            "fifth."
        ),
        (r"\bfeatures\.\d",),
    ),
    "penultimate": Entry(
        "Penultimate layer",
        (
            "The penultimate (second-to-last) layer is the vector the model computes just before its "
            "head turns it into 10 scores: the network's own description of the digit. Digits it finds "
            "alike get similar vectors."
        ),
        (r"\bpenultimate\b",),
    ),
}
GLOSSARY: dict[str, str] = {term: entry.text for term, entry in ENTRIES.items()}
# The entry explaining each field of a run (TrainConfig's settings, then results), for forms and tables.
FIELD_TERMS: dict[str, str] = {
    "epochs": "epoch", "batch_size": "batch_size", "lr": "learning_rate", "optimizer": "optimizer",
    "momentum": "momentum", "weight_decay": "weight_decay", "dropout": "dropout", "schedule": "schedule",
    "augment": "augment", "val_split": "val_split", "seed": "seed", "device": "device", "precision": "precision",
    "time_budget_s": "time_budget_s", "parameters": "parameters",
}


def explain(term: str) -> str:
    """The glossary text for `term`; KeyError names the known terms when a page asks for a typo."""
    try:
        return GLOSSARY[term]
    except KeyError:
        raise KeyError(f"no glossary entry {term!r}; known: {', '.join(GLOSSARY)}") from None


def terms_in(text: str) -> list[str]:
    """The glossary entries `text` names, in glossary order."""
    return [term for term, entry in ENTRIES.items() if any(re.search(w, text, re.IGNORECASE) for w in entry.words)]


def notes(text: str, skip: tuple[str, ...] = ()) -> str:
    """The entries `text` names, except those in `skip` (explained nearby already), each as its
    title and explanation (markdown, our own words): the tooltip or caption of a line that names
    several settings or terms at once."""
    return "\n\n".join(f"**{ENTRIES[term].title}**: {ENTRIES[term].text}"
                         for term in terms_in(text) if term not in skip)
