"""Where ``flexflow diff`` reads its two sides' specs: a git revision, the working tree, or a folder.

A revision is read with git's plumbing (``rev-parse``, ``ls-tree``, ``cat-file``) and never checked out:
nothing is written into the repository or beside it. git runs from a list of arguments (no shell), and a
revision is resolved once to its commit id with ``rev-parse --verify --end-of-options REV^{commit}``;
every later call names that id. A revision that starts with ``-`` is refused before git sees it, so a
hostile one (``--output=/etc/x``) can never be read as an option.

The files chosen are those :func:`flexflow.spec.folder.find_spec_files` would list in a checkout of the
revision: ``*.yaml`` and ``*.yml`` under the specs folder, none in a hidden folder or hidden itself, each
read up to the spec size limit. A committed symlink is read as a checkout would read it: the file it
points to within the same commit (a link out of the repository leads nowhere, and is reported).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from flexflow.errors import FlexflowError
from flexflow.spec.folder import SPEC_SUFFIXES, find_spec_files
from flexflow.spec.pipeline import read_spec_text
from flexflow.spec.yaml_source import MAX_BYTES

#: The longest any one git call may take (a huge repository's ls-tree is well under it).
GIT_TIMEOUT_SECONDS = 120
_BLOB_MODES = ("100644", "100755")
_LINK_MODE = "120000"
#: Symlinks followed from one spec file before it is given up on (a cycle ends here too).
MAX_LINK_HOPS = 8


class SourceError(FlexflowError):
    """A side of a diff cannot be read: no such revision or folder, not a git repository, git failed."""


@dataclass(frozen=True)
class SpecTexts:
    """The spec files of one side: their text (raw bytes), and those that could not be read, with why."""

    label: str  # as the user named the side: a revision, "working tree", a folder
    commit: str | None  # the commit a revision resolved to; None for a folder or the working tree
    folder: str  # the specs folder, as shown (``specs`` in a repository, ``old/specs`` for a folder)
    exists: bool  # whether that folder exists on this side (a revision before the specs folder: no)
    files: Mapping[str, bytes] = field(default_factory=dict)
    unreadable: Mapping[str, str] = field(default_factory=dict)


def specs_path(text: str) -> PurePosixPath:
    """``--specs``: a relative path inside the repository (or folder); ``.`` is the root itself."""
    path = PurePosixPath(text.replace("\\", "/")) if text else PurePosixPath("")
    if "\0" in text or path.is_absolute() or ".." in path.parts:
        raise SourceError(f"--specs {text!r}: give a folder relative to the repository root, without '..'")
    return path


def repository_root(cwd: Path) -> Path:
    """The top of the git working tree ``cwd`` is in, or :class:`SourceError`."""
    try:
        out = _git(["rev-parse", "--show-toplevel"], cwd)
    except SourceError as exc:
        raise SourceError(f"{cwd} is not in a git repository ({exc}); give two folders to compare instead") from None
    return Path(out.decode().strip())


def resolve_commit(revision: str, root: Path) -> str:
    """The commit id ``revision`` names in the repository at ``root``, or :class:`SourceError`."""
    if not revision or revision.startswith("-") or "\0" in revision or "\n" in revision:
        raise SourceError(f"{revision!r} is not a revision: give a branch, tag or commit (not an option)")
    try:
        out = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}"], root)
    except SourceError:
        raise SourceError(f"{revision!r} is neither a folder nor a commit of the repository at {root}") from None
    return out.decode().strip()


def revision_texts(revision: str, root: Path, specs: PurePosixPath) -> SpecTexts:
    """The spec files under ``specs`` in ``revision``, read from git's object store."""
    commit = resolve_commit(revision, root)
    folder = specs.as_posix() if specs.parts else "."
    tree = f"{commit}:{specs.as_posix() if specs.parts else ''}"
    try:
        kind = _git(["cat-file", "-t", tree], root).decode().strip()
    except SourceError:
        return SpecTexts(revision, commit, folder, exists=False)  # no specs folder in that revision
    if kind != "tree":
        raise SourceError(f"{folder} is a file in {revision}, not a folder of specs")
    wanted: dict[str, str] = {}  # the file as shown -> its blob id
    unreadable: dict[str, str] = {}
    listing = _git(["ls-tree", "-r", "-l", "-z", tree], root)
    for entry in filter(None, listing.split(b"\0")):
        meta, _, raw_name = entry.partition(b"\t")
        mode, entry_type, obj, size = meta.decode().split(maxsplit=3)
        name = raw_name.decode("utf-8", errors="replace")
        relative = PurePosixPath(name)
        if entry_type != "blob" or not name.endswith(SPEC_SUFFIXES) or any(p.startswith(".") for p in relative.parts):
            continue
        shown = (specs / relative).as_posix()
        if mode == _LINK_MODE:  # read as a checkout would: the file it points to, inside the tree
            followed = _follow_link(commit, specs / relative, obj, root)
            if isinstance(followed, str):
                unreadable[shown] = followed
                continue
            obj, size = followed
        if mode not in (*_BLOB_MODES, _LINK_MODE):
            unreadable[shown] = f"not a regular file in git (mode {mode})"
        elif int(size) > MAX_BYTES:
            unreadable[shown] = (
                f"the file is larger than {MAX_BYTES:,} bytes ({int(size):,}); a spec is a few kilobytes"
            )
        else:
            wanted[shown] = obj
    files = dict(zip(wanted, _blobs(list(wanted.values()), root), strict=True))
    return SpecTexts(revision, commit, folder, True, files, unreadable)


def _follow_link(commit: str, link: PurePosixPath, obj: str, root: Path) -> tuple[str, str] | str:
    """The blob id and size a committed symlink leads to within the commit, or why it leads nowhere."""
    for _ in range(MAX_LINK_HOPS):
        target = _blobs([obj], root)[0].decode("utf-8", errors="replace")
        path = posixpath.normpath(posixpath.join(link.parent.as_posix(), target))
        if target.startswith("/") or path == ".." or path.startswith("../") or "\0" in target:
            return f"a symlink to {target!r}, outside the repository: a revision holds no such file"
        listing = _git(["ls-tree", "-l", "-z", commit, "--", path], root)
        entry = listing.split(b"\0")[0]
        meta, _, name = entry.partition(b"\t")
        if not entry or name.decode("utf-8", errors="replace") != path:
            return f"a symlink to {path}, which is not in this revision"
        mode, entry_type, obj, size = meta.decode().split(maxsplit=3)
        if entry_type != "blob":
            return f"a symlink to {path}, which is not a file"
        if mode in _BLOB_MODES:
            return obj, size
        link = PurePosixPath(path)
    return f"a chain of more than {MAX_LINK_HOPS} symlinks"


def _blobs(objects: list[str], root: Path) -> list[bytes]:
    """The contents of these blob ids, in order, from one ``git cat-file --batch`` (not one git per file)."""
    if not objects:
        return []
    out = _git(["cat-file", "--batch"], root, ("\n".join(objects) + "\n").encode())
    found: list[bytes] = []
    at = 0
    for obj in objects:
        end = out.index(b"\n", at)
        header = out[at:end].decode().split()
        if header[:2] != [obj, "blob"]:
            raise SourceError(f"git cat-file answered {' '.join(header)!r} for blob {obj}")
        size = int(header[2])
        found.append(out[end + 1 : end + 1 + size])
        at = end + 1 + size + 1  # the content, then a line feed
    return found


def folder_texts(label: str, top: Path, specs: PurePosixPath, shown_top: str) -> SpecTexts:
    """The spec files under ``top / specs`` on disk (a folder given, or the working tree)."""
    folder = top.joinpath(*specs.parts)
    shown_folder = PurePosixPath(shown_top, *specs.parts).as_posix()
    if not folder.is_dir():
        return SpecTexts(label, None, shown_folder, exists=False)
    files: dict[str, bytes] = {}
    unreadable: dict[str, str] = {}
    for file in find_spec_files([folder]):
        shown = PurePosixPath(shown_top, *specs.parts, *file.relative_to(folder).parts).as_posix()
        try:
            files[shown] = read_spec_text(file)
        except OSError as exc:
            unreadable[shown] = f"cannot read the file: {exc.strerror or exc}"
        except ValueError as exc:
            unreadable[shown] = str(exc)
    return SpecTexts(label, None, shown_folder, True, files, unreadable)


def _git(args: list[str], cwd: Path, stdin: bytes | None = None) -> bytes:
    """git's output, or :class:`SourceError` with what it said; never through a shell, no pager, no prompts."""
    git = shutil.which("git")
    if git is None:
        raise SourceError("git is not installed (needed to read a revision)")
    try:
        done = subprocess.run(  # noqa: S603 (a list of arguments, no shell; a revision never starts with '-')
            [git, "--no-pager", *args],
            cwd=cwd,
            input=stdin,
            capture_output=True,
            check=False,
            timeout=GIT_TIMEOUT_SECONDS,
            env=_git_environment(),
        )
    except subprocess.TimeoutExpired:
        raise SourceError(f"git {args[0]} took longer than {GIT_TIMEOUT_SECONDS} s") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
        raise SourceError(said[-1] if said else f"git {args[0]} failed (exit {done.returncode})")
    return done.stdout


def _git_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_LITERAL_PATHSPECS"] = "1"  # a path is a path: ':(glob)...' and '*' mean nothing
    env["LC_ALL"] = "C"
    return env
