"""The one notation for naming a tree: ``NAME`` is a branch, ``@NAME`` is a snapshot.

Branch and snapshot names never start with ``@`` (:func:`branchfs.refs.check_ref_name`),
so the two cannot be confused. Every verb that names a tree goes through
:func:`tree_ref` or :func:`branch_name`, which check that the tree exists and, when it does
not, say what the user probably meant ("there is a snapshot 'v1': write it @v1").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .spec import CommandError

if TYPE_CHECKING:
    from ..store import Store

#: The mark that makes a name a snapshot's.
SNAPSHOT = "@"

NOTATION = "a tree is a branch NAME or a snapshot @NAME"


def _exists(store: Store, name: str, snapshot: bool) -> bool:
    from ..errors import BranchNotFound, InvalidName

    try:
        if snapshot:
            store.snapshot_tree(name)
        else:
            store.branch(name)
    except (BranchNotFound, InvalidName):
        return False
    return True


def tree_ref(store: Store, word: str) -> str:
    """Check that ``word`` (``NAME`` or ``@NAME``) names a tree; the engine's ref for it.

    Raises :class:`CommandError` (kind ``BranchNotFound``) with a suggestion if it does not.
    """
    if word.startswith(SNAPSHOT):
        name = word[1:]
        if _exists(store, name, True):
            return word
        if _exists(store, name, False):
            raise CommandError(
                f"no snapshot named {name!r}, but there is a branch {name!r}: "
                f"write it {name} (without the @)",
                kind="BranchNotFound",
            )
        raise CommandError(
            f"no snapshot named {name!r}; `branchfs snapshots` lists them", kind="BranchNotFound"
        )
    if _exists(store, word, False):
        return word
    raise _missing_branch(store, word)


def branch_name(store: Store, word: str, what: str = "branch") -> str:
    """Check that ``word`` names a *branch* (a writable tree); its name.

    A snapshot (``@NAME``) is refused with what to do instead.
    """
    if word.startswith(SNAPSHOT):
        raise CommandError(
            f"{word} is a snapshot, and snapshots are read-only; the {what} must be a branch "
            f"(fork one from it: `branchfs fork {word} NEW`)",
            kind="InvalidName",
        )
    if _exists(store, word, False):
        return word
    raise _missing_branch(store, word)


def snapshot_name(store: Store, word: str) -> str:
    """Check that ``word`` (``NAME`` or ``@NAME``) names a snapshot; its bare name."""
    name = word[1:] if word.startswith(SNAPSHOT) else word
    if _exists(store, name, True):
        return name
    hint = "`branchfs snapshots` lists them"
    if _exists(store, name, False):
        hint = f"{name!r} is a branch; take a snapshot of it with `branchfs snapshot {name} NEW`"
    raise CommandError(f"no snapshot named {name!r}; {hint}", kind="BranchNotFound")


def _missing_branch(store: Store, name: str) -> CommandError:
    from ..refs import check_ref_name

    check_ref_name(name)  # a malformed name says so (InvalidName)
    if _exists(store, name, True):
        return CommandError(
            f"no branch named {name!r}, but there is a snapshot {name!r}: write it @{name}",
            kind="BranchNotFound",
        )
    return CommandError(
        f"no branch named {name!r}; `branchfs branches` lists them ({NOTATION})",
        kind="BranchNotFound",
    )
