"""The branchfs FUSE mount daemon, imported as ``branchfs_fuse``; it speaks the kernel protocol."""
