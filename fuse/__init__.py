"""The branchfs FUSE mount daemon, imported as ``branchfs_fuse``; it speaks the kernel protocol."""

from branchfs.native import refuse_stale as _refuse_stale

# In a source checkout, refuse compiled modules older than their .py (make install rebuilds).
_refuse_stale(__path__[0])
