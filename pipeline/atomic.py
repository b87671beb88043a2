"""Atomic file writes: readers see the old file or the new one, never half of one."""
from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (same suffix) to write; rename it to ``path`` on success and
    delete it on any error.  The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)             # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


#: the lock file a command holds in its output folder while it writes there (``folder_lock``)
LOCK_FILE = ".fskp.lock"


@contextmanager
def folder_lock(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold ``folder``'s lock (an exclusive ``flock`` on ``folder/.fskp.lock``, created with the folder) while
    ``command`` writes there; another command holding it is a FileExistsError that names it (pid, host, since).

    The operating system drops the lock when its process ends, however it ends, so a killed run never leaves the
    folder locked; the file stays, saying who held it last.  Where ``fcntl`` is missing (Windows) nothing is locked.
    """
    import json
    import socket
    import time

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:                                                   # Windows: no advisory locks here
        yield folder
        return
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                holder = {}
            who = (f"{holder.get('command', 'fskp')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
                   f"since {holder.get('since', '?')})")
            raise FileExistsError(f"{folder} is being written by another {who}: wait for it to finish, or give "
                                  f"another output folder") from None
        except OSError as e:                                              # e.g. a network file system without locks
            print(f"warning: cannot lock {folder} ({e.strerror}); another run into it at the same time would not be "
                  f"refused", file=sys.stderr, flush=True)
            yield folder
            return
        record = json.dumps({"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        yield folder
    finally:
        os.close(fd)                                                      # closing the file drops the lock
