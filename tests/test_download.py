"""`fskp download`: fetch, resume, verify and unpack against a local HTTP server (no internet needed)."""
from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

import jobs.cli
from pipeline.card import load_card
from pipeline.download import (CHECKSUMS_FILE, BrokenDownload, DownloadError, Progress, download_card,
                               part_path, unpack)

PAYLOAD = bytes(range(256)) * 800          # 200 KiB, so a broken download has something to break


class FileServer:
    """Serves ``files`` over HTTP with Range support; ``drop_after[path] = N`` closes the connection once
    the body reaches byte N of the file (once); ``ignore_range`` makes it answer every GET with the whole file.  ``requests`` records (path, Range header) of each GET."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if server.ignore_range:
                    rng = None
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng else 0
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                stop = server.drop_after.pop(self.path, len(data))
                self.wfile.write(data[start:stop])
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


def main(argv: list[str]) -> int:
    """``fskp`` with only this subcommand registered, so other commands' imports cannot interfere."""
    return jobs.cli.main(argv)


@pytest.fixture(autouse=True)
def only_download_command(monkeypatch):
    monkeypatch.setattr(jobs.cli, "command_names", lambda: ["download"])


@pytest.fixture
def server():
    s = FileServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:          # stored, so the archive is as large as PAYLOAD
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_card(tmp_path: Path, downloads: list[dict], auto_download: bool = True, **source) -> Path:
    raw = {"name": "toy", "title": "Toy", "keypoints": ["a", "b"], "metric": {"kind": "pck"},
           "source": {"homepage": "https://example.org/toy", "license": "CC-BY 4.0",
                      "citation": "Doe et al., Toy keypoints, 2023", "auto_download": auto_download,
                      "downloads": downloads, **source}}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def toy_files(server):
    server.files["/toy-images.zip"] = make_zip({"images/0001.bin": PAYLOAD, "images/readme.txt": b"toy images\n"})
    server.files["/toy-labels.tar.gz"] = make_tar_gz({"labels/train.csv": b"file,a_x,a_y\n0001.bin,1,2\n"})
    return server


def test_full_download_unpacks_and_verifies(tmp_path, toy_files, capsys):
    zip_bytes, tar_bytes = toy_files.files["/toy-images.zip"], toy_files.files["/toy-labels.tar.gz"]
    card = write_card(tmp_path, [{"url": toy_files.url("/toy-images.zip"), "sha256": sha(zip_bytes)},
                                 {"url": toy_files.url("/toy-labels.tar.gz"), "sha256": sha(tar_bytes)}],
                      layout="toy/\n  images/0001.bin\n  labels/train.csv")
    root = tmp_path / "datasets"
    assert main(["download", str(card), "--root", str(root)]) == 0
    out, err = capsys.readouterr()
    folder = root / "toy"
    assert (folder / "images" / "0001.bin").read_bytes() == PAYLOAD
    assert (folder / "labels" / "train.csv").read_text().startswith("file,a_x")
    assert (folder / "toy-images.zip").read_bytes() == zip_bytes
    assert not list(folder.rglob("*.part")) and not list(folder.glob(".unpack-*"))
    assert "100.0%" in err and "/s" in err                   # the progress line: bytes, percent, speed
    assert "downloaded and verified" in out and "labels/train.csv" in out

    n = len(toy_files.requests)                              # a second run verifies and fetches nothing
    assert main(["download", str(card), "--root", str(root), "--quiet"]) == 0
    assert len(toy_files.requests) == n


def test_broken_download_leaves_part_and_next_run_resumes(tmp_path, toy_files):
    zip_bytes = toy_files.files["/toy-images.zip"]
    card = load_card(write_card(tmp_path, [{"url": toy_files.url("/toy-images.zip"), "sha256": sha(zip_bytes)}]))
    toy_files.drop_after["/toy-images.zip"] = 70_000
    root = tmp_path / "datasets"
    dest = root / "toy" / "toy-images.zip"

    with pytest.raises(BrokenDownload, match=r"broke after 70000 of \d+ bytes.*run the same command again"):
        download_card(card, root, retries=0)
    assert part_path(dest).stat().st_size == 70_000
    assert not dest.exists() and not (root / "toy" / "images").exists()

    download_card(card, root, retries=0)
    assert toy_files.requests[-1] == ("/toy-images.zip", "bytes=70000-")
    assert dest.read_bytes() == zip_bytes and not part_path(dest).exists()
    assert (root / "toy" / "images" / "0001.bin").read_bytes() == PAYLOAD


def test_broken_download_is_resumed_within_one_run_when_retrying(tmp_path, toy_files):
    zip_bytes = toy_files.files["/toy-images.zip"]
    card = load_card(write_card(tmp_path, [{"url": toy_files.url("/toy-images.zip"), "sha256": sha(zip_bytes)}]))
    toy_files.drop_after["/toy-images.zip"] = 50_000
    log = io.StringIO()
    download_card(card, tmp_path / "datasets", retries=1, retry_wait=0, progress=log)
    assert [r for _, r in toy_files.requests] == [None, "bytes=50000-"]
    assert (tmp_path / "datasets" / "toy" / "toy-images.zip").read_bytes() == zip_bytes
    assert "retrying (1/1)" in log.getvalue()


def test_server_without_range_support_restarts_from_zero(tmp_path, toy_files):
    zip_bytes = toy_files.files["/toy-images.zip"]
    card = load_card(write_card(tmp_path, [{"url": toy_files.url("/toy-images.zip"), "sha256": sha(zip_bytes)}]))
    dest = tmp_path / "datasets" / "toy" / "toy-images.zip"
    dest.parent.mkdir(parents=True)
    part_path(dest).write_bytes(zip_bytes[:1000])
    toy_files.ignore_range = True
    download_card(card, tmp_path / "datasets")
    assert toy_files.requests == [("/toy-images.zip", "bytes=1000-")]
    assert dest.read_bytes() == zip_bytes


def test_whole_part_file_left_by_a_crash_is_verified_and_kept(tmp_path, toy_files):
    zip_bytes = toy_files.files["/toy-images.zip"]
    card = load_card(write_card(tmp_path, [{"url": toy_files.url("/toy-images.zip"), "sha256": sha(zip_bytes)}]))
    dest = tmp_path / "datasets" / "toy" / "toy-images.zip"
    dest.parent.mkdir(parents=True)
    part_path(dest).write_bytes(zip_bytes)                 # complete, but never renamed
    download_card(card, tmp_path / "datasets")             # the server answers 416: nothing left to send
    assert toy_files.requests == [("/toy-images.zip", f"bytes={len(zip_bytes)}-")]
    assert dest.read_bytes() == zip_bytes and not part_path(dest).exists()


def test_http_error_names_the_url(tmp_path, toy_files):
    card = load_card(write_card(tmp_path, [{"url": toy_files.url("/missing.zip")}]))
    with pytest.raises(DownloadError, match=r"/missing\.zip: HTTP 404"):
        download_card(card, tmp_path / "datasets")
    assert not list((tmp_path / "datasets" / "toy").glob("missing.zip*"))


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing_complete(tmp_path, toy_files, capsys):
    card = write_card(tmp_path, [{"url": toy_files.url("/toy-images.zip"), "sha256": "0" * 64}])
    root = tmp_path / "datasets"
    assert main(["download", str(card), "--root", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sha256 mismatch for toy-images.zip" in err and "0" * 64 in err and "from the card" in err
    folder = root / "toy"
    assert not (folder / "toy-images.zip").exists() and not part_path(folder / "toy-images.zip").exists()
    assert not (folder / "images").exists()


def test_first_download_records_checksum_and_later_ones_verify_it(tmp_path, toy_files):
    card = load_card(write_card(tmp_path, [{"url": toy_files.url("/toy-labels.tar.gz")}]))
    root = tmp_path / "datasets"
    folder = download_card(card, root)
    original = toy_files.files["/toy-labels.tar.gz"]
    assert json.loads((folder / CHECKSUMS_FILE).read_text()) == {"toy-labels.tar.gz": sha(original)}

    # a local copy that got corrupted is fetched again and passes against the recorded checksum
    (folder / "toy-labels.tar.gz").write_bytes(b"corrupt")
    download_card(card, root)
    assert (folder / "toy-labels.tar.gz").read_bytes() == original

    # the server's file changes: the next download fails verification and leaves nothing complete
    (folder / "toy-labels.tar.gz").unlink()
    toy_files.files["/toy-labels.tar.gz"] = make_tar_gz({"labels/train.csv": b"tampered\n"})
    with pytest.raises(DownloadError, match=r"sha256 mismatch for toy-labels.tar.gz.*\.checksums\.json"):
        download_card(card, root)
    assert not (folder / "toy-labels.tar.gz").exists() and not part_path(folder / "toy-labels.tar.gz").exists()
    assert (folder / "labels" / "train.csv").read_text().startswith("file,a_x")   # the good unpack is untouched


def test_manual_card_prints_instructions_and_fetches_nothing(tmp_path, toy_files, capsys):
    card = write_card(tmp_path, [{"url": toy_files.url("/toy-images.zip")}], auto_download=False,
                      instructions="Register at https://example.org/toy/request and download toy-images.zip.",
                      layout="images/NNNN.bin\nlabels/train.csv")
    root = tmp_path / "datasets"
    assert main(["download", str(card), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    for text in ("does not allow automatic download", "https://example.org/toy", "CC-BY 4.0",
                 "Register at https://example.org/toy/request", "Doe et al., Toy keypoints, 2023",
                 "images/NNNN.bin", "labels/train.csv", str(root / "toy")):
        assert text in out
    assert toy_files.requests == [] and not root.exists()


@pytest.mark.parametrize("kind", ["zip-dotdot", "zip-absolute", "tar-dotdot", "tar-link-outside"])
def test_unpack_refuses_members_outside_the_folder(tmp_path, kind):
    archive = tmp_path / ("evil.zip" if kind.startswith("zip") else "evil.tar.gz")
    if kind == "zip-dotdot":
        archive.write_bytes(make_zip({"ok.txt": b"ok", "../escaped.txt": b"x"}))
    elif kind == "zip-absolute":
        archive.write_bytes(make_zip({"/tmp/escaped.txt": b"x"}))
    elif kind == "tar-dotdot":
        archive.write_bytes(make_tar_gz({"a/../../escaped.txt": b"x"}))
    else:
        archive.write_bytes(make_tar_gz({}, links={"escaped": "../../outside"}))
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(DownloadError, match="refusing to unpack"):
        unpack(archive, into)
    assert list(into.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


def test_bad_filename_in_card_is_refused(tmp_path, toy_files):
    card = load_card(write_card(tmp_path, [{"url": toy_files.url("/toy-images.zip"), "filename": "../x.zip"}]))
    with pytest.raises(DownloadError, match="must be a plain file name"):
        download_card(card, tmp_path / "datasets")
    assert toy_files.requests == []


def test_progress_line_is_throttled():
    stream = io.StringIO()
    bar = Progress("f.zip", total=1000, stream=stream, interval=3600)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2                                 # the first update and the final line only
    assert "1000 B / 1000 B" in lines[-1] and "100.0%" in lines[-1] and "B/s" in lines[-1]
