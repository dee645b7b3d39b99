"""Names in a line of text, quoted as git quotes them, so that a name holding a newline
cannot pass for two lines (``status``, ``diff``, messages that name a path)."""

from __future__ import annotations

#: C escapes git uses in a quoted path.
_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
    '"': '\\"',
    "\\": "\\\\",
}


def _plain(c: str) -> bool:
    return c >= " " and c != "\x7f" and c not in _ESCAPES and not "\udc80" <= c <= "\udcff"


def quote_path(path: str) -> str:
    """``path`` for a line of text, as git prints it with ``core.quotePath=false``: as it
    is, or, if it holds a control character, a double quote, a backslash or bytes that are
    not UTF-8 (``os.fsdecode``'s surrogates), in double quotes with C escapes (``\\n``,
    ``\\t``, ``\\"``, ``\\\\``, octal ``\\ooo`` for other bytes), so that a name
    holding a newline cannot pass for two lines."""
    if all(_plain(c) for c in path):
        return path
    out = []
    for c in path:
        if _plain(c):
            out.append(c)
        elif c in _ESCAPES:
            out.append(_ESCAPES[c])
        else:  # a control character, or an undecodable byte (U+DC80-U+DCFF)
            out.append(f"\\{(ord(c) - 0xDC00 if ord(c) >= 0xDC80 else ord(c)):03o}")
    return '"' + "".join(out) + '"'
