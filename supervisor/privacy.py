"""Private by default: what the bot keeps is readable by its own user only.

The data dir holds every message the bot has seen (DMs included), the journal, the logs
and the gateway's session; `.env` holds the token and API keys. Before the supervisor
or the sandbox creates anything, `make_private` sets umask 077, which every service
inherits, so whatever the umask was, new files are 0600 and new directories 0700; it
also tightens a data dir that an older version or a hand left open. Like ssh with its
keys, `secrets_file_warning` says so when `.env` is open to other users.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
GROUP_AND_OTHERS = 0o077


def make_private(data_dir: Path) -> int:
    """From now on this process and its children create owner-only files and directories;
    `data_dir` exists, and nothing under it that we own is open to anyone else.

    Returns how many existing paths had to be tightened (0 once it is done).
    """
    os.umask(PRIVATE_UMASK)
    data_dir.mkdir(parents=True, exist_ok=True)
    return tighten(data_dir)


def tighten(root: Path, uid: int | None = None) -> int:
    """Drop group and other permissions from `root` and everything under it owned by `uid`
    (default: us); return how many paths changed. A `root` owned by someone else is left
    alone, and so are paths another user owns. Symlinks are neither followed nor changed,
    and other filesystems are not entered; `/` and the home directory are never walked.
    """
    uid = os.geteuid() if uid is None else uid
    root = root.resolve()  # a data dir may be a symlink to where the data lives
    if root in (Path(root.anchor), Path(os.path.expanduser("~")).resolve()):
        return 0  # a mistaken --data-dir must not chmod the whole system or home
    try:
        top = root.stat()
    except FileNotFoundError:
        return 0
    if top.st_uid != uid or not stat.S_ISDIR(top.st_mode):
        return 0
    count = int(_tighten_one(root, top))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = _lstat(path)
            if st is None or stat.S_ISLNK(st.st_mode) or st.st_dev != top.st_dev:
                if name in dirnames:
                    dirnames.remove(name)  # neither followed nor entered
                continue
            if st.st_uid == uid and _tighten_one(path, st):
                count += 1
    return count


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:  # a service may remove files while we walk
        return None


def _tighten_one(path: Path, st: os.stat_result) -> bool:
    mode = stat.S_IMODE(st.st_mode)
    if not mode & GROUP_AND_OTHERS:
        return False
    try:
        os.chmod(path, mode & ~GROUP_AND_OTHERS)
    except FileNotFoundError:
        return False
    return True


def secrets_file_warning(path: Path) -> str | None:
    """One line with the fix when the file holding secrets is open to group or others."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None  # no .env: nothing to protect
    if not mode & GROUP_AND_OTHERS:
        return None
    return (
        f"{path} holds the bot's secrets and other users can access it "
        f"(mode {mode:04o}): chmod 600 {path}"
    )
