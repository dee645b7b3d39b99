"""Build the daemon's hot path and the engine modules it runs as C extensions with mypyc.

Everything else about the package is declared in pyproject.toml; this file only adds the
extension modules. The modules listed in ``NATIVE`` are compiled by mypyc (which
ships with mypy) from the same ``mypy --strict`` sources: the Python files stay the source
of truth, nothing is written in C. See docs/architecture.md, "Compiled modules".

Environment:

* ``BRANCHFS_PURE=1``: build without compiling anything (a machine without a C compiler);
  the package then runs as plain Python, slower.
* ``BRANCHFS_MYPYC_OPT``: the C optimization level (default ``3``).

A build that should compile but cannot fails loudly: it never falls back to slow code.
"""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

ROOT = Path(__file__).resolve().parent
#: Source directory of each package (pyproject.toml's package-dir).
PACKAGE_DIRS = {"branchfs": "branchfs", "branchfs_fuse": "fuse"}
#: Where mypy sees ``fuse/`` under its installed name ``branchfs_fuse`` (a symlink): mypyc
#: names each extension after its module, and the daemon's modules import each other as
#: ``branchfs_fuse.*``.
ALIAS_DIR = ROOT / "build" / "mypyc-src"


#: The compiled modules: the request loop of the daemon and the engine modules a CREATE,
#: UNLINK, WRITE, READ, LOOKUP or READDIR runs (chosen by profile: benchmarks/fuse_cpu.py),
#: and the daemon's permission checks. Not here: command-line modules (their start-up is
#: import-bound, not CPU-bound); branchfs/errors.py (exceptions subclassing builtins stay
#: Python classes); store.py (tests/fuse/test_discard_race.py patches notices.serving,
#: which store.py calls: a compiled call would bind past the patch); branch.py (narrows
#: PathTree.store's type, which mypyc refuses), with pathtree.py and pathwrite.py under it
#: (an interpreted class cannot subclass a compiled one); staging.py (a ``continue`` inside
#: ``try``/``finally``); diff.py, history.py and merge/ (compiled, tests/test_model.py
#: found a merge that the oracle says conflicts merged cleanly: not yet explained);
#: merge/rules.py (a frozen dataclass that sets undeclared attributes); fuse/caps.py
#: (ctypes structures); gc, fsck, compact, the control directory and the daemon's
#: start-up (not per request).
NATIVE = [
    "branchfs_fuse.session",
    "branchfs_fuse.kernel",
    "branchfs_fuse.bridge",
    "branchfs_fuse.nodes",
    "branchfs_fuse.inodes",
    "branchfs_fuse.writeback",
    "branchfs_fuse.groupcommit",
    "branchfs_fuse.buffers",
    "branchfs_fuse.listings",
    "branchfs_fuse.orphans",
    "branchfs_fuse.stats",
    "branchfs_fuse.coherence",
    "branchfs_fuse.dac",
    "branchfs_fuse.privs",
    "branchfs_fuse.errors",
    "branchfs.tree",
    "branchfs.attrs",
    "branchfs.records",
    "branchfs.keys",
    "branchfs.layers",
    "branchfs.layerrecords",
    "branchfs.chunks",
    "branchfs.content",
    "branchfs.notices",
    "branchfs.batches",
    "branchfs.envs",
    "branchfs.refs",
    "branchfs.paths",
    "branchfs.meta",
    "branchfs.following",
    "branchfs.engine",
    "branchfs.damage",
]


def source_path(module: str) -> Path:
    """``branchfs_fuse.session`` -> ``fuse/session.py`` (relative to the root)."""
    package, _, rest = module.partition(".")
    return Path(PACKAGE_DIRS[package], *rest.split(".")).with_suffix(".py")


def pure() -> bool:
    """Whether ``BRANCHFS_PURE`` asks for a build without compiled modules."""
    return os.environ.get("BRANCHFS_PURE", "") not in ("", "0")


def in_place() -> bool:
    """Whether this run builds into the source tree (an editable install, ``--inplace``)."""
    return "editable_wheel" in sys.argv or "--inplace" in sys.argv or "-i" in sys.argv


def remove_stale_extensions(keep: set[str]) -> None:
    """Delete in-tree (editable) extension files of modules not in ``keep`` (dotted names):
    Python would import them before the ``.py``."""
    for package, package_dir in PACKAGE_DIRS.items():
        for so in (ROOT / package_dir).rglob("*.so"):
            rel = so.parent.relative_to(ROOT / package_dir).parts
            if ".".join((package, *rel, so.name.split(".", 1)[0])) not in keep:
                so.unlink()


def compiled_extensions() -> list[Extension]:
    """Type-check the NATIVE modules and generate their C (mypyc); the extensions to build."""
    try:
        from mypyc.build import mypycify
    except ImportError as exc:  # the build-system requires list mypy
        raise SystemExit(
            f"branchfs: cannot compile ({exc}): install mypy, or build the slower pure-Python "
            "package with BRANCHFS_PURE=1"
        ) from exc
    alias = ALIAS_DIR / "branchfs_fuse"
    ALIAS_DIR.mkdir(parents=True, exist_ok=True)
    if not alias.is_symlink():
        alias.symlink_to(ROOT / "fuse", target_is_directory=True)
    paths = []
    for module in NATIVE:
        path = source_path(module)
        if module.startswith("branchfs_fuse."):
            path = alias.relative_to(ROOT) / path.relative_to("fuse")
        paths.append(str(path))
    if in_place():
        remove_stale_extensions(set(NATIVE) | {GROUP + "__mypyc"})
    config = ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", "build/mypyc-cache"]
    built: list[Extension] = mypycify(
        [*config, *paths],
        opt_level=os.environ.get("BRANCHFS_MYPYC_OPT", "3"),
        group_name=GROUP,
        multi_file=True,
    )
    for ext in built:  # mypyc writes a dotted group's headers under its package's directory
        ext.include_dirs.append(str(Path("build", *GROUP.split(".")[:-1])))
    return built


class BuildExt(build_ext):
    """``build_ext`` that compiles only the C files changed since the last build, two at a
    time: mypyc rewrites a C file only when its text changes, so editing one module
    recompiles that module (and the modules whose shared header changed)."""

    def finalize_options(self) -> None:
        """Run mypyc now, when extensions are really built, not each time setuptools runs
        this file (metadata, build requirements): ext_modules holds a placeholder until then."""
        self.distribution.ext_modules = compiled_extensions()
        super().finalize_options()

    def run(self) -> None:
        """Build, then mark in-tree extensions as built now: the import guard
        (branchfs/native.py) compares their time with their ``.py``'s.

        Extensions of modules no longer compiled are deleted from the build directory
        first: a wheel packs everything there, and a stale module's extension would ask
        the shared library for a module it no longer holds."""
        wanted = {self.get_ext_filename(ext.name) for ext in self.extensions}
        for built in Path(self.build_lib).rglob("*.so"):
            if str(built.relative_to(self.build_lib)) not in wanted:
                built.unlink()
        super().run()
        if self.inplace:
            for ext in self.extensions:
                os.utime(self.get_ext_fullpath(ext.name))

    def build_extension(self, ext: Extension) -> None:
        """Build ``ext``, compiling only its stale objects, in parallel."""
        from mypyc.build import include_dir as mypyc_include_dir

        compiler = self.compiler
        whole = compiler.compile
        # The inputs every object depends on besides its own C file: the generated headers,
        # the flags, and mypyc's runtime headers (a new mypy brings new ones).
        runtime = Path(mypyc_include_dir())
        stamp = hashlib.sha256(repr(ext.extra_compile_args).encode())
        for header in sorted(runtime.rglob("*.h")):
            stamp.update(header.read_bytes())
        stamp_file = Path(self.build_temp) / (ext.name + ".inputs")
        fresh = stamp_file.exists() and stamp_file.read_text() == stamp.hexdigest()
        headers = [p for p in Path("build").rglob("*.h") if "mypyc-src" not in p.parts]
        newest_header = max((h.stat().st_mtime_ns for h in headers), default=0)

        def stale(source: str, obj: str) -> bool:
            if not fresh or not os.path.exists(obj):
                return True
            built = os.stat(obj).st_mtime_ns
            return built < os.stat(source).st_mtime_ns or built < newest_header

        def compile_changed(sources: list[str], output_dir: str | None = None, **kw: Any) -> Any:
            objects = compiler.object_filenames(sources, output_dir=output_dir)
            todo = [s for s, o in zip(sources, objects, strict=True) if stale(s, o)]
            jobs = max(1, min(len(todo), os.cpu_count() or 1))
            with ThreadPoolExecutor(jobs) as pool:
                for _ in pool.map(lambda s: whole([s], output_dir=output_dir, **kw), todo):
                    pass
            return objects

        compiler.compile = compile_changed
        try:
            super().build_extension(ext)
        except (CCompilerError, ExecError, PlatformError) as exc:
            raise SystemExit(
                f"branchfs: compiling the C that mypyc generated failed ({exc}); the output "
                "above says why. A missing C compiler or Python headers: install them "
                "(Debian: gcc python3-dev), or build the slower pure-Python package with "
                "BRANCHFS_PURE=1"
            ) from exc
        finally:
            compiler.compile = whole
        stamp_file.parent.mkdir(parents=True, exist_ok=True)
        stamp_file.write_text(stamp.hexdigest())


#: The shared library all compiled modules live in (``branchfs/native__mypyc*.so``).
GROUP = "branchfs.native"

os.chdir(ROOT)
if pure():
    print("branchfs: BRANCHFS_PURE is set: no compiled modules (slower)", file=sys.stderr)
    if in_place():
        remove_stale_extensions(set())
    setup()
else:
    setup(ext_modules=[Extension(GROUP + "__mypyc", [])], cmdclass={"build_ext": BuildExt})
