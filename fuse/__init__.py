"""The branchfs FUSE mount daemon (pyfuse3 + trio), imported as ``branchfs_fuse``."""
