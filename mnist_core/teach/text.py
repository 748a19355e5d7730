"""Text from visitors, links and errors, made safe for Streamlit's markdown.

Streamlit draws st.error, st.info, st.caption and friends as markdown. A value a visitor chose
(a name, a ?run= link, a file name) or an error that quotes one must appear as the characters
typed, never as a link, an image, HTML or emphasis, so every markdown and HTML special character
is escaped with a backslash (CommonMark treats any escaped ASCII punctuation as itself).
"""

from __future__ import annotations

import logging
import unicodedata

MARKDOWN_SPECIALS = frozenset("\\`*_{}[]()<>#+-.!|~$&:\"'=/")
LOG = logging.getLogger("mnist_core")


def plain(value: object, limit: int = 200) -> str:
    """`value` as text that markdown shows literally: specials escaped, control characters and
    line breaks replaced by spaces, at most `limit` characters (an ellipsis marks a cut)."""
    text = "".join(" " if unicodedata.category(c).startswith("C") else c for c in str(value))
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return "".join("\\" + c if c in MARKDOWN_SPECIALS else c for c in text)


def report(what: str, error: BaseException) -> str:
    """Log an internal error for the operator (paths, reprs and all) and return the short
    sentence a visitor sees instead."""
    LOG.warning("%s: %s: %s", what, type(error).__name__, error)
    return f"{what}. The server's log says why."
