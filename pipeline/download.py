"""Fetch, verify and unpack the files a dataset card lists under ``source.downloads``.

Everything lands in ``ROOT/<card name>/``::

    ROOT/<name>/<filename>          each download, kept after unpacking (a re-run verifies it and skips it)
    ROOT/<name>/<filename>.part     a download in progress; the next run resumes it with an HTTP Range request
    ROOT/<name>/...                 the contents of the archives (.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz)
    ROOT/<name>/.checksums.json     sha256 of downloads whose card gives none, recorded at the first download
    ROOT/<name>/.unpacked.json      sha256 of each archive whose contents are in place

A file only takes its final name once it is complete and its sha256 matches: the card's ``sha256`` where
given, else the one recorded at its first download.  A mismatch removes the ``.part`` (so nothing that looks
complete is left) and raises ``DownloadError``.  Archives are unpacked into a staging folder, checked
member by member (no absolute paths, no ``..``, no links leading outside), then moved into place.

Only the standard library is used (urllib), so downloads work wherever the package installs.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import TextIO
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from pipeline.card import Card, Download

CHUNK_BYTES = 1 << 16
CHECKSUMS_FILE = ".checksums.json"
UNPACKED_FILE = ".unpacked.json"
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DownloadError(ValueError):
    """A download that failed or did not verify; the message names the URL or file and what to do next."""


class BrokenDownload(DownloadError):
    """The connection broke (or could not be opened); the ``.part`` file is kept and a re-run resumes it."""


# ---- paths and bookkeeping -------------------------------------------------------------------------
def dataset_dir(card: Card, root: str | Path) -> Path:
    """The folder a card's files are fetched and unpacked into: ``root/<card name>``."""
    return Path(root) / card.name


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def is_archive(filename: str) -> bool:
    return filename.lower().endswith(ARCHIVE_SUFFIXES)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class JsonRecord:
    """A small {filename: sha256} file, rewritten atomically on every change."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise DownloadError(f"{self.path}: not valid JSON ({e}); delete it to start its record afresh") from None
        if not isinstance(data, dict):
            raise DownloadError(f"{self.path}: expected a mapping of file name to sha256")
        return data

    def get(self, filename: str) -> str | None:
        return self.read().get(filename)

    def put(self, filename: str, sha256: str) -> None:
        data = self.read()
        data[filename] = sha256
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def _checked_filename(dl: Download, card: Card) -> str:
    name = dl.filename
    if not name or name != PurePosixPath(name).name or name in (".", "..") or "\\" in name or name.startswith("."):
        raise DownloadError(f"card {card.name}: download {dl.url}: filename {name!r} must be a plain file name "
                            "(no folders, not hidden)")
    return name


def _checked_sha256(dl: Download, card: Card) -> str | None:
    if dl.sha256 is None:
        return None
    digest = str(dl.sha256).strip().lower().removeprefix("sha256:")
    if not _SHA256.fullmatch(digest):
        raise DownloadError(f"card {card.name}: download {dl.filename}: sha256 {dl.sha256!r} is not 64 hex digits")
    return digest


# ---- progress --------------------------------------------------------------------------------------
def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """One status line: bytes so far, percent (when the size is known) and speed.

    On a terminal the line is rewritten in place at most ``1 / interval`` times a second; elsewhere (logs)
    a new line is written every ``interval`` seconds (default 0.25 s on a terminal, 10 s otherwise).
    """

    def __init__(self, label: str, total: int | None, stream: TextIO | None, done: int = 0,
                 interval: float | None = None):
        self.label, self.total, self.stream, self.done = label, total, stream, done
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.25 if self.tty else 10.0)
        self.start_done, self.start_time = done, time.monotonic()
        self.last_render = float("-inf")

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last_render >= self.interval:
            self.last_render = now
            self._render(now, final=False)

    def close(self) -> None:
        self._render(time.monotonic(), final=True)

    def line(self, now: float) -> str:
        elapsed = max(now - self.start_time, 1e-6)
        speed = (self.done - self.start_done) / elapsed
        size = human_bytes(self.done) + (f" / {human_bytes(self.total)}" if self.total else "")
        percent = f"  {100.0 * self.done / self.total:5.1f}%" if self.total else ""
        return f"  {self.label}  {size}{percent}  {human_bytes(speed)}/s"

    def _render(self, now: float, final: bool) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.stream.write("\r" + self.line(now).ljust(72) + ("\n" if final else ""))
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()


# ---- fetching --------------------------------------------------------------------------------------
def _total_from_content_range(value: str | None) -> int | None:
    m = re.fullmatch(r"\s*bytes\s+(?:\d+-\d+|\*)/(\d+)\s*", value or "")
    return int(m.group(1)) if m else None


def fetch(url: str, dest: Path, *, timeout: float = 30.0, progress: TextIO | None = None) -> str:
    """Download ``url`` into ``dest``'s ``.part`` file, resuming what is there; return the sha256 of it all.

    The ``.part`` is not renamed: the caller verifies the checksum first.  Raises ``BrokenDownload`` when
    the connection cannot be opened or breaks (the ``.part`` keeps every byte received), ``DownloadError``
    on an HTTP error.
    """
    part = part_path(dest)
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "fskp-download/1"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as e:
        total = _total_from_content_range(e.headers.get("Content-Range")) if e.headers else None
        e.close()
        if e.code == 416 and have:              # nothing left to send: the .part may already be whole
            if total == have:
                return sha256_file(part)
            part.unlink()                       # longer than the file on the server: start again
            return fetch(url, dest, timeout=timeout, progress=progress)
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise BrokenDownload(f"{url}: cannot connect ({reason})") from None

    with response:
        status = response.status or 200         # file:// URLs carry no status
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if have and status == 206:
            start = re.match(r"\s*bytes\s+(\d+)-", response.headers.get("Content-Range") or "")
            if not start or int(start.group(1)) != have:
                raise DownloadError(f"{url}: asked to resume at byte {have}, server answered "
                                    f"{response.headers.get('Content-Range')!r}; delete {part} to start again")
        else:
            have = 0                            # the server ignored the range: take the whole file again
        total = have + length if length is not None else None

        hasher = hashlib.sha256()
        if have:
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    hasher.update(chunk)
        bar = Progress(dest.name, total, progress, done=have)
        with open(part, "ab" if have else "wb") as out:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    hasher.update(chunk)
                    bar.update(len(chunk))
            except (http.client.HTTPException, OSError) as e:
                bar.close()
                raise BrokenDownload(_broken_message(url, part, bar.done, total, e)) from None
        bar.close()
    if total is not None and bar.done != total:
        raise BrokenDownload(_broken_message(url, part, bar.done, total, "connection closed early"))
    return hasher.hexdigest()


def _broken_message(url: str, part: Path, done: int, total: int | None, why: object) -> str:
    of = f" of {total}" if total is not None else ""
    if isinstance(why, BaseException):
        why = f"{type(why).__name__}: {why}" if str(why) else type(why).__name__
    return (f"{url}: download broke after {done}{of} bytes ({why}); "
            f"the partial file is kept at {part}; run the same command again to resume")


def fetch_with_retries(url: str, dest: Path, *, retries: int = 2, retry_wait: float = 2.0,
                       timeout: float = 30.0, progress: TextIO | None = None) -> str:
    """``fetch``, resuming up to ``retries`` more times after a broken connection (waits grow linearly)."""
    for attempt in range(retries + 1):
        try:
            return fetch(url, dest, timeout=timeout, progress=progress)
        except BrokenDownload as e:
            if attempt == retries:
                raise
            if progress is not None:
                print(f"  {e}; retrying ({attempt + 1}/{retries})", file=progress)
            time.sleep(retry_wait * (attempt + 1))
    raise AssertionError("unreachable")


# ---- unpacking -------------------------------------------------------------------------------------
def _unsafe_reason(name: str) -> str | None:
    """Why an archive member name would land outside the target folder, or None when it is safe."""
    if "\\" in name:
        name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' in path"
    return None


def _extract_zip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            reason = _unsafe_reason(info.filename)
            if reason:
                raise DownloadError(f"{archive}: refusing to unpack member {info.filename!r} ({reason})")
        zf.extractall(into)


def _extract_tar(archive: Path, into: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        for member in tf.getmembers():
            reason = _unsafe_reason(member.name)
            if reason:
                raise DownloadError(f"{archive}: refusing to unpack member {member.name!r} ({reason})")
        try:
            tf.extractall(into, filter="data")  # also refuses links out of the folder and device files
        except tarfile.FilterError as e:
            raise DownloadError(f"{archive}: refusing to unpack: {e}") from None


def _move_into(staging: Path, into: Path) -> None:
    """Move everything under ``staging`` into ``into``, merging folders and replacing files."""
    for top, dirs, files in os.walk(staging):
        rel = Path(top).relative_to(staging)
        links = [d for d in dirs if os.path.islink(os.path.join(top, d))]
        dirs[:] = [d for d in dirs if d not in links]
        for d in dirs:
            target = into / rel / d
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                target.unlink()
            target.mkdir(exist_ok=True)
        for f in files + links:
            target = into / rel / f
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(os.path.join(top, f), target)


def unpack(archive: Path, into: Path) -> None:
    """Unpack a .zip or tar archive into ``into`` safely (no member may land outside it)."""
    for stale in into.glob(".unpack-*"):        # left by an unpack that was interrupted
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".unpack-{archive.name}-", dir=into))
    try:
        try:
            if archive.name.lower().endswith(".zip"):
                _extract_zip(archive, staging)
            else:
                _extract_tar(archive, staging)
        except (zipfile.BadZipFile, tarfile.ReadError, EOFError) as e:
            raise DownloadError(f"{archive}: not a readable archive ({e})") from None
        _move_into(staging, into)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---- the whole card --------------------------------------------------------------------------------
def download_card(card: Card, root: str | Path, *, retries: int = 2, retry_wait: float = 2.0,
                  timeout: float = 30.0, progress: TextIO | None = None) -> Path:
    """Fetch, verify and unpack every file of ``card.source.downloads`` into ``root/<name>``; return it.

    Files already present and verified are not fetched again; archives already unpacked (same sha256)
    are not unpacked again.  ``progress`` (e.g. ``sys.stderr``) gets the progress lines; None is silent.
    Raises ``DownloadError`` when the card does not allow automatic download
    (see ``manual_instructions``), lists nothing, or a file fails to download or verify.
    """
    src = card.source
    if not src.auto_download:
        raise DownloadError(f"card {card.name}: its license does not allow automatic download "
                            "(source.auto_download is false); see `fskp download` for where to get it")
    if not src.downloads:
        raise DownloadError(f"card {card.name}: source.downloads lists no files")
    folder = dataset_dir(card, root)
    folder.mkdir(parents=True, exist_ok=True)
    recorded = JsonRecord(folder / CHECKSUMS_FILE)
    unpacked = JsonRecord(folder / UNPACKED_FILE)

    for dl in src.downloads:
        filename = _checked_filename(dl, card)
        dest = folder / filename
        card_sha = _checked_sha256(dl, card)
        expected = card_sha or recorded.get(filename)
        where = "the card" if card_sha else f"{recorded.path}, recorded at its first download"

        if dest.exists():
            actual = sha256_file(dest)
            if expected and actual != expected:
                if progress is not None:
                    print(f"  {dest}: does not match its sha256 from {where}; fetching it again", file=progress)
                dest.unlink()
            else:
                part_path(dest).unlink(missing_ok=True)
        if not dest.exists():
            if progress is not None:
                print(f"fetching {dl.url}", file=progress)
            actual = fetch_with_retries(dl.url, dest, retries=retries, retry_wait=retry_wait, timeout=timeout,
                                        progress=progress)
            if expected and actual != expected:
                part_path(dest).unlink(missing_ok=True)
                hint = ("" if card_sha else f" If the file on the server changed on purpose, delete the entry "
                        f"{filename!r} from {recorded.path} and run again.")
                raise DownloadError(f"{dl.url}: sha256 mismatch for {filename}: expected {expected} (from {where}), "
                                    f"got {actual}; the downloaded file was removed.{hint}")
            os.replace(part_path(dest), dest)
        if not expected:
            recorded.put(filename, actual)

        if dl.unpack and is_archive(filename) and unpacked.get(filename) != actual:
            if progress is not None:
                print(f"unpacking {filename}", file=progress)
            unpack(dest, folder)
            unpacked.put(filename, actual)
    return folder


def manual_instructions(card: Card, root: str | Path) -> str:
    """What to tell a user whose dataset must be fetched by hand: where, under which terms, into which layout."""
    src = card.source
    folder = dataset_dir(card, root)
    lines = [f"{card.title} ({card.name}): the license does not allow automatic download; "
             "please obtain the files yourself.", ""]
    for label, value in (("Homepage", src.homepage), ("License", src.license)):
        if value:
            lines.append(f"{label}: {value}")
    if src.instructions:
        lines += ["", "How to obtain it:", *("  " + ln for ln in src.instructions.strip().splitlines())]
    if src.downloads:
        lines += ["", "Files:", *(f"  {dl.filename}  ({dl.url})" for dl in src.downloads)]
    lines += ["", f"Place them in {folder}/"]
    if src.layout:
        lines += ["with this layout:", *("  " + ln for ln in src.layout.rstrip().splitlines())]
    if src.citation:
        lines += ["", "Please cite:", *("  " + ln for ln in src.citation.strip().splitlines())]
    return "\n".join(lines)
