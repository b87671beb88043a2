"""Two runs into one output folder: the second is refused by name while the first writes (its records, CSVs and
checkpoints would be mixed with the first's), and a run killed mid-way leaves the folder free."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import main
from pipeline.atomic import LOCK_FILE, folder_lock
from tests.test_predict_videos import checkpoint, write_video  # noqa: F401  (a small model, a small video)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def held(tmp_path):
    """A process that holds ``tmp_path / "out"``'s lock as ``fskp predict`` until it is killed."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pipeline.atomic import folder_lock\n"
                               "with folder_lock(sys.argv[1], 'fskp predict'):\n    print('held', flush=True)\n"
                               "    time.sleep(600)", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    yield out, holder
    holder.kill()
    holder.wait()


def test_a_held_folder_is_refused_with_its_holder_and_freed_when_the_holder_is_killed(held):
    out, holder = held
    with pytest.raises(FileExistsError, match=rf"{out} is being written by another fskp predict \(pid {holder.pid} "):
        with folder_lock(out, "fskp label"):
            pass
    holder.kill()                                          # SIGKILL: no clean-up of its own
    holder.wait()
    with folder_lock(out, "fskp label"):                   # the operating system dropped the lock
        assert '"command": "fskp label"' in (out / LOCK_FILE).read_text()
    with folder_lock(out, "fskp predict"):                 # and a finished run's lock is free again
        pass


def test_predict_and_label_into_a_folder_another_run_writes_are_refused_before_they_start(held, checkpoint,
                                                                                         tmp_path, capsys):
    from tests.test_label import write_project

    out, holder = held
    video = write_video(tmp_path / "videos" / "a.mp4", 2, seed=0)
    missing = tmp_path / "missing.pt"
    assert main(["predict", "--checkpoint", str(missing), "--video", str(video), "--out", str(out)]) == 2
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err    # bad input is still named first
    refused = f"{out} is being written by another fskp predict (pid {holder.pid} on "
    assert main(["predict", "--checkpoint", str(checkpoint), "--video", str(video), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert refused in err and "wait for it to finish, or give another output folder" in err
    project = write_project(tmp_path / "project")
    assert main(["label", "--project", str(project), "--out", str(out), "--iterations", "2"]) == 2
    assert refused in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]       # the refused runs wrote nothing


def test_a_file_system_without_locks_is_said_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with folder_lock(tmp_path / "out", "fskp predict") as folder:
        (folder / "written.csv").write_text("x\n")
    assert f"warning: cannot lock {tmp_path / 'out'} (No locks available)" in capsys.readouterr().err
    assert (tmp_path / "out" / "written.csv").exists()
