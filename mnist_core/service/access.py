"""Who a visitor is and what they may do: names, the teacher, and the check every write passes.

A dashboard shared with a class has to say whose run is whose and stop one visitor from
stopping or deleting another's work. The rules live here, in the core, so a page that forgets
to hide a button still cannot break them.

Identity comes from the deployment's login (Streamlit's OIDC `st.login`) when it has one: the
verified e-mail is the owner. Without a login, a visitor picks a display name, which this server
then reserves for that browser (a random token kept in a cookie; only its hash is stored), so
nobody else can claim it. The teacher is named by the deployment: login e-mails listed in
`MNIST_TEACHERS`, or whoever knows `teacher_passphrase` from Streamlit's secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass

from mnist_core import settings
from mnist_core.settings import Limits
from mnist_core.service.store import ACTIVE, RunRecord, RunStore, RunStoreError

NAME_MAX = 32
# Letters (any script), digits, spaces and . - ' inside: no markup characters (not even _), no brackets, so a
# name can never look like a link, an HTML tag or a command-line owner ("alice (command line)").
NAME_PATTERN = re.compile(r"[^\W_](?:(?:[^\W_]|[ .'-])*[^\W_])?")
PINNED = "pinned_run"


class NotAllowed(RunStoreError):
    """A visitor asked for something this deployment does not let them do; the message says why."""


class NameTaken(NotAllowed):
    """Another browser already uses this name on this server."""


@dataclass(frozen=True)
class Person:
    """The visitor behind a request. `name` is what runs record as their owner ("" = anonymous)."""

    name: str = ""
    teacher: bool = False
    verified: bool = False  # from the deployment's login, not typed in

    @property
    def known(self) -> bool:
        return bool(self.name)


ANONYMOUS = Person()


def clean_name(raw: object) -> str:
    """A display name as stored and shown, or NotAllowed saying what is wrong with it."""
    if not isinstance(raw, str):
        raise NotAllowed("Your name must be text.")
    name = " ".join(unicodedata.normalize("NFKC", raw).split())
    if not name:
        raise NotAllowed("Type a name first.")
    if len(name) > NAME_MAX:
        raise NotAllowed(f"Use at most {NAME_MAX} characters for your name.")
    if not NAME_PATTERN.fullmatch(name):
        raise NotAllowed("Use letters, digits, spaces, dots, hyphens and apostrophes only, "
                         "starting and ending with a letter or digit.")
    return name


def name_key(name: str) -> str:
    """Names that differ only in case are the same person: "Ada" and "ada" cannot both exist."""
    return name.casefold()


def new_token() -> str:
    """A browser's secret: kept in its cookie, stored only as a hash."""
    return secrets.token_hex(16)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def valid_token(token: object) -> bool:
    return isinstance(token, str) and re.fullmatch(r"[0-9a-f]{32}", token) is not None


def claim_name(store: RunStore, raw_name: object, token: str) -> str:
    """Reserve a display name for the browser holding `token`; the cleaned name, or NameTaken."""
    name = clean_name(raw_name)
    if not valid_token(token):
        raise NotAllowed("This browser's identity token is not valid; reload the page.")
    if not store.claim_name(name_key(name), name, token_hash(token)):
        raise NameTaken(f"Someone else on this server already uses the name {name}. Pick another one.")
    return name


def person_for_token(store: RunStore, token: object, teacher: bool = False) -> Person:
    """The visitor a browser's cookie names (anonymous when it names nobody)."""
    if not valid_token(token):
        return Person(teacher=teacher)
    return Person(name=store.name_for(token_hash(token)) or "", teacher=teacher)


def teacher_emails(raw: str | None = None) -> frozenset[str]:
    """`MNIST_TEACHERS`: comma-separated login e-mails, compared case-insensitively."""
    value = settings.teachers() if raw is None else raw
    return frozenset(e.strip().casefold() for e in value.split(",") if e.strip())


def person_from_login(user: dict, teachers: frozenset[str] | None = None) -> Person:
    """The visitor as the deployment's login knows them: the e-mail is the owner, verified."""
    email = str(user.get("email") or "").strip()
    if not email:
        raise NotAllowed("The login did not say who you are (no e-mail); ask the teacher.")
    teachers = teacher_emails() if teachers is None else teachers
    return Person(name=email, teacher=email.casefold() in teachers, verified=True)


def passphrase_matches(given: object, expected: object) -> bool:
    """The teacher's passphrase check, in constant time; never true when none is configured."""
    if not isinstance(given, str) or not isinstance(expected, str) or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


# -- the rules ------------------------------------------------------------------------------------


def may_manage(person: Person, record: RunRecord) -> bool:
    """Stop, delete or spend server time on this run: its owner or the teacher."""
    return may_act_for(person, record.owner)


def may_act_for(person: Person, owner: str) -> bool:
    """`person` is `owner` (who launched a run or a sweep) or the teacher."""
    return person.teacher or (person.known and owner == person.name)


def manageable(person: Person, records: list[RunRecord], limits: Limits) -> list[RunRecord]:
    """The runs `person` may stop or delete here (none in a read-only demo): what pages offer."""
    return [] if limits.read_only else [r for r in records if may_manage(person, r)]


def require_writable(limits: Limits, action: str) -> None:
    if limits.read_only:
        raise NotAllowed(f"This is a read-only demo: {action} is switched off.")


def require_manager(person: Person, record: RunRecord, action: str) -> None:
    if not may_manage(person, record):
        whose = f"{record.owner}'s" if record.owner else "someone else's"
        raise NotAllowed(f"Only the run's owner or the teacher may {action} it; this is {whose} run.")


def require_teacher(person: Person, action: str) -> None:
    if not person.teacher:
        raise NotAllowed(f"Only the teacher may {action}.")


def require_name(person: Person) -> None:
    if not person.known:
        raise NotAllowed("Give your name first: every run records who launched it.")


def existing(store: RunStore, run_id: str) -> RunRecord:
    record = store.get_run(run_id)
    if record is None:
        raise NotAllowed("That run does not exist (any more).")
    return record


def stop_run(store: RunStore, run_id: str, person: Person, limits: Limits) -> bool:
    """Stop a queued or running run for its owner or the teacher; False when it had ended."""
    require_writable(limits, "stopping runs")
    require_manager(person, existing(store, run_id), "stop")
    return store.request_stop(run_id)


def delete_run(store: RunStore, run_id: str, person: Person, limits: Limits) -> None:
    """Delete an ended run, its curves and weights, for its owner or the teacher."""
    require_writable(limits, "deleting runs")
    record = existing(store, run_id)
    require_manager(person, record, "delete")
    store.delete_run(run_id)
    if pinned_run(store) == run_id:
        store.set_class_setting(PINNED, None)


def pinned_run(store: RunStore) -> str | None:
    """The teacher's reference run, shown first to everyone; None when unset or gone."""
    run_id = store.class_setting(PINNED)
    return run_id if run_id and store.get_run(run_id) is not None else None


def pin_run(store: RunStore, run_id: str | None, person: Person, limits: Limits) -> None:
    """The teacher pins a reference run (None unpins)."""
    require_writable(limits, "pinning runs")
    require_teacher(person, "pin a reference run")
    if run_id is not None:
        existing(store, run_id)
    store.set_class_setting(PINNED, run_id)


def clear_class(store: RunStore, person: Person, limits: Limits) -> tuple[int, int]:
    """The teacher starts over: every active run is stopped and every ended run except the
    pinned reference is deleted. Returns (stopped, deleted); a run still stopping is kept."""
    require_writable(limits, "clearing the class")
    require_teacher(person, "clear the class")
    keep = pinned_run(store)
    stopped = deleted = 0
    for record in store.list_runs():
        if record.id == keep:
            continue
        if record.status in ACTIVE:
            stopped += store.request_stop(record.id)
            if store.get_run(record.id).status in ACTIVE:
                continue  # running: it ends at its next batch, as cancelled
        try:
            store.delete_run(record.id)
            deleted += 1
        except RunStoreError:
            pass  # became active meanwhile (relaunched): it stays
    for sweep in store.list_sweeps():
        store.delete_sweep(sweep.id)
    return stopped, deleted
