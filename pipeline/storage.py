"""Locations as users give them: a local or NFS path, or an object-store URI (s3://, gs://, ...).

Object stores go through pyarrow's filesystems, the ones Ray Train and Ray Data use, so one location means
the same thing to the driver, the Train workers and the data tasks.  An S3-compatible store on premises
(MinIO, Ceph, or moto in tests) is reached through the standard ``AWS_ENDPOINT_URL``.
"""
from __future__ import annotations

from pathlib import Path


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` names an object store (``scheme://...``) rather than a local/NFS path."""
    return "://" in str(location) and not str(location).startswith("file://")


def resolve_location(location: str | Path) -> str:
    """A URI unchanged; a local path made absolute (Ray workers run in other working directories).
    ``Path("s3://b/x")`` would collapse the URI into a local folder named ``s3:/b/x``: never do that."""
    text = str(location)
    if is_uri(text):
        return text.rstrip("/")
    if text.startswith("file://"):
        text = text[len("file://"):]
    return str(Path(text).expanduser().resolve())


def filesystem(location: str | Path):
    """(pyarrow filesystem, path on it) of a location."""
    import pyarrow.fs

    text = resolve_location(location)
    if is_uri(text):
        return pyarrow.fs.FileSystem.from_uri(text)
    return pyarrow.fs.LocalFileSystem(), text


def join(location: str, *parts: str) -> str:
    """``location`` / parts, for URIs and paths alike."""
    return "/".join([str(location).rstrip("/"), *[p.strip("/") for p in parts]]) if is_uri(location) \
        else str(Path(location, *parts))


def write_text(location: str, text: str) -> None:
    """Write a small text file at a URI or path (parent folders created as needed)."""
    fs, path = filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def read_text(location: str) -> str:
    fs, path = filesystem(location)
    with fs.open_input_file(path) as f:
        return f.read().decode()


def open_input(location: str):
    """A random-access binary file (pyarrow NativeFile) at a URI or path: Parquet and PNG readers seek in it."""
    fs, path = filesystem(location)
    return fs.open_input_file(path)


def list_files(location: str, recursive: bool = False) -> list[str]:
    """The files in a folder at a URI or path, as locations of the same kind, sorted."""
    import pyarrow.fs

    fs, path = filesystem(location)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=recursive, allow_not_found=True))
    base = resolve_location(location)
    return sorted(join(base, i.path[len(path):].lstrip("/")) for i in infos if i.type == pyarrow.fs.FileType.File)


def upload_folder(local: str | Path, location: str, last: str | None = None) -> None:
    """Copy a local folder's files to ``location`` (a URI), the file named ``last`` after every other one, so
    that a reader who checks for it never sees half an upload as complete."""
    import pyarrow.fs

    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    for f in sorted(files, key=lambda f: f.name == last):
        rel = f.relative_to(local).as_posix()
        pyarrow.fs.copy_files(str(f), f"{path}/{rel}", source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=fs)


def delete_folder(location: str) -> None:
    fs, path = filesystem(location)
    fs.delete_dir(path)


def exists(location: str) -> bool:
    import pyarrow.fs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound
