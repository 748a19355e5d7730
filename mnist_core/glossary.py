"""Short answers to the questions the seed notes ask, shown where each concept appears.

Kept in the core (plain text, no Streamlit) so the pages, the CLI and the tests share one wording.
"""

from __future__ import annotations

GLOSSARY: dict[str, str] = {
    "epoch": (
        "One epoch is one full pass over the training set: every training image is seen once, "
        "in mini-batches. More epochs give the model more chances to learn, and more chances to "
        "overfit. On MNIST one epoch of a small CNN already reaches about 98%."
    ),
    "batch_size": (
        "How many images are averaged into one gradient step. Larger batches give smoother "
        "gradients and better hardware use (more images per second) but fewer steps per epoch; "
        "smaller batches take more, noisier steps. 64 to 256 is typical for MNIST."
    ),
    "learning_rate": (
        "How far each step moves the weights along the negative gradient. Too small: training "
        "crawls. Too large: the loss jumps around or becomes NaN (the run is marked diverged). "
        "Adam usually wants about 0.001, SGD about 0.01 to 0.1."
    ),
    "optimizer": (
        "The rule that turns gradients into weight updates. SGD subtracts learning rate x gradient "
        "(momentum adds a running average of past steps). Adam, AdamW and RMSprop scale each "
        "weight's step by the history of its gradients, so one learning rate suits all weights. "
        "'scratch-sgd' is the seed notebook's hand-written update: w -= lr * w.grad; w.grad = None."
    ),
    "momentum": (
        "SGD with momentum keeps a running average of past gradients and steps along it, which "
        "smooths noisy mini-batch gradients and speeds up progress along consistent directions."
    ),
    "weight_decay": (
        "Pulls every weight a little towards zero at each step (L2 regularisation). Smaller "
        "weights give smoother functions that tend to generalise better; too much and the model "
        "underfits. AdamW applies it decoupled from the adaptive step, as intended."
    ),
    "dropout": (
        "During training, randomly zeroes this fraction of a layer's activations, so the network "
        "cannot rely on any single unit. It fights overfitting; it is switched off for evaluation."
    ),
    "schedule": (
        "How the learning rate changes during training. 'step' multiplies it by 0.7 after every "
        "epoch; 'plateau' halves it when the validation loss stops improving; 'onecycle' warms it "
        "up to the chosen rate then anneals it to almost zero, often the fastest way to a good model."
    ),
    "augment": (
        "Data augmentation: each batch is randomly rotated (±10°), scaled (±10%) and shifted "
        "(±2 px), so the model sees new variants of the digits every epoch. It reduces "
        "overfitting and helps with hand-drawn digits that are not perfectly centred."
    ),
    "val_split": (
        "The fraction of the 60,000 training images held out as a validation set. The model never "
        "trains on it, so it tells you how well the model generalises while you tune settings, "
        "without touching the test set, which should be looked at only to report the final result."
    ),
    "seed": (
        "The random seed fixes every random choice: initial weights, the validation split, the "
        "order of batches, dropout and augmentation. The same seed and settings give the same "
        "run on the CPU (GPU kernels may be nondeterministic: they can sum in different orders), "
        "so a difference between two runs is caused by the setting you changed, not by luck."
    ),
    "device": (
        "Where the arithmetic runs. 'auto' picks an NVIDIA GPU (CUDA), then Apple's MPS, then the "
        "CPU. On a GPU training uses mixed precision (bfloat16) for speed."
    ),
    "precision": (
        "How many bits each number gets. 'fp32' computes everything in 32-bit floats. 'bf16' "
        "(mixed precision) does the big matrix and convolution products in 16-bit bfloat16, which "
        "is faster on GPUs and modern CPUs, while weights and the loss stay 32-bit. 'auto' uses "
        "bf16 where it is faster: CUDA GPUs, and convolutional models on CPUs with bf16 support."
    ),
    "time_budget_s": "Optional: stop training after this many seconds, keeping the model as it is then.",
    "normalisation": (
        "Pixels are scaled from 0-255 to 0-1, then standardised with the training set's mean "
        "(0.1307) and standard deviation (0.3081): x' = (x - 0.1307) / 0.3081. Centred inputs of "
        "unit scale keep gradients of similar size across weights, so training converges faster "
        "and one learning rate works for the whole network."
    ),
    "splits": (
        "Train: the images the weights are fitted to. Validation: held-out training images used to "
        "choose settings and spot overfitting. Test: the 10,000 separate images used only to "
        "report how well the final model does on digits it has never seen."
    ),
    "loss_vs_metric": (
        "The loss (cross-entropy) is what the optimizer minimises: smooth and differentiable. "
        "Accuracy is what people care about, but it changes in jumps and has no useful gradient. "
        "A falling loss usually means rising accuracy, but not always step for step."
    ),
    "softmax": (
        "The model outputs 10 scores (logits). Softmax turns them into probabilities: "
        "p_i = exp(z_i) / sum_j exp(z_j). Cross-entropy is then -log(p of the true digit): "
        "0 when the model is certain and right, large when it is confident and wrong."
    ),
    "overfitting": (
        "Overfitting is when training accuracy keeps rising while validation accuracy stalls or "
        "falls: the model memorises the training images instead of learning digits. Remedies: "
        "more data or augmentation, dropout, weight decay, fewer epochs (early stopping)."
    ),
    "confusion_matrix": (
        "Row = the true digit, column = the predicted digit; each cell counts test images. The "
        "diagonal holds the correct predictions; bright off-diagonal cells show which digits the "
        "model mixes up (4 vs 9, 3 vs 5, 7 vs 2 are classic)."
    ),
    "precision_recall": (
        "Precision of a digit: of the images predicted as that digit, the fraction that really "
        "are. Recall: of the images that really are that digit, the fraction found. F1 is their "
        "harmonic mean."
    ),
    "baseline": (
        "A baseline is the simplest method that could work, measured before anything clever: here, "
        "classify a digit by which mean image it is closest to. It costs nothing to train and "
        "sets the bar: a neural network that cannot beat it is not learning anything useful."
    ),
    "mean_image": (
        "The average of all training images of one digit, pixel by pixel: a blurry template of "
        "how that digit is usually written. Bright where most writers put ink."
    ),
    "activation": (
        "A nonlinear function (here ReLU: max(0, x)) between layers. Without it, any stack of "
        "linear layers collapses into one linear layer and cannot learn curved decision boundaries."
    ),
    "cached": (
        "A run's identity is a hash of all its settings. Launching settings that were already "
        "trained shows the stored run at once instead of training the same thing again; change any "
        "setting (even the seed) to train anew."
    ),
}


def explain(term: str) -> str:
    """The glossary text for `term`; KeyError names the known terms when a page asks for a typo."""
    try:
        return GLOSSARY[term]
    except KeyError:
        raise KeyError(f"no glossary entry {term!r}; known: {', '.join(GLOSSARY)}") from None
