"""``python -m branchfs_fuse --store STORE [--branch B] MOUNTPOINT``: run a mount daemon."""

from __future__ import annotations

import argparse
import sys

from .daemon import run


def main(argv: list[str] | None = None) -> int:
    """Parse the daemon's arguments and serve until unmounted."""
    p = argparse.ArgumentParser(prog="branchfs_fuse", description=__doc__)
    p.add_argument("--store", required=True, help="the store directory")
    p.add_argument("--branch", default="main", help="the branch to mount (default: main)")
    p.add_argument("--ready-fd", type=int, default=None, help="report readiness on this fd")
    p.add_argument("--debug", action="store_true", help="log every request")
    p.add_argument("--allow-other", action="store_true", help="let other users enter the mount")
    p.add_argument(
        "--default-permissions",
        action="store_true",
        help="let the kernel check permissions even on a root daemon's private mount",
    )
    p.add_argument("mountpoint")
    a = p.parse_args(argv)
    return run(
        a.store,
        a.mountpoint,
        a.branch,
        ready_fd=a.ready_fd,
        debug=a.debug,
        allow_other=a.allow_other,
        default_permissions=a.default_permissions,
    )


if __name__ == "__main__":
    sys.exit(main())
