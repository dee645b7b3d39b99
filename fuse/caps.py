"""A thread's capability sets, read with ``capget(2)`` through ctypes.

Its own module, left interpreted, for :mod:`.dac`, which mypyc compiles: mypyc's C for a
module that subclasses ``ctypes.Structure`` does not build (``CPyModule__ctypes``).
"""

from __future__ import annotations

import ctypes

_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_capget = ctypes.CDLL(None, use_errno=True).capget


def capabilities(pid: int, *, permitted: bool = False) -> int:
    """The effective (or ``permitted``) capability set of thread ``pid``, as a bit mask;
    0 if the thread is gone (nothing is granted then)."""
    header = _CapHeader(_CAP_VERSION_3, pid)
    data = (_CapData * 2)()
    if _capget(ctypes.byref(header), data) != 0:
        return 0
    low, high = data
    if permitted:
        return int(low.permitted) | int(high.permitted) << 32
    return int(low.effective) | int(high.effective) << 32
