"""Out of space and unwritable outputs: exit 2 with one line naming the file (and the bytes where known), no
segfault, no traceback, nothing half-written that looks complete, and a re-run after freeing space finishes.

Before: a full tmpfs during extract gave exit 139 (HDF5's exit handler crashed on the file it could not
flush; h5py raises its write failures as RuntimeError with "errno = 28" in the text) with seven tracebacks;
during fit/stats a traceback or the same segfault. The real-disk tests mount a small tmpfs (root only) and
run the CLI in a subprocess; the injected tests run everywhere.
"""
import errno
import os
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest
import yaml

from brainalign.errors import OutputError, output_error
from brainalign.h5io import atomic_h5, is_complete
from test_fit import make_fit_fixture
from test_mpi import _env, _setup


def _mount(path, size):
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return p.returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MB tmpfs (skipped where this process may not mount one); ``fill(keep_kb)`` leaves that much free."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    if os.geteuid() != 0 or not _mount(mnt, "2m"):
        pytest.skip("mounting a tmpfs needs root")

    def fill(keep_kb):
        free = shutil.disk_usage(mnt).free // 1024
        with open(mnt / "filler", "wb") as fh:
            fh.write(b"\0" * max(0, free - keep_kb) * 1024)

    try:
        yield mnt, fill
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


EXTRACT_DRIVER = """
import sys
sys.path[:0] = [{toolkit!r}, {tests!r}]
from brainalign.models.synthetic import synthetic_stimuli
import brainalign.stimuli.windows as windows

N = {{"e1": 12, "e2": 12, "e3": 12}}
windows.load_episode_stimuli = lambda cfg, ep, *a: synthetic_stimuli(
    ep, n_windows=N[ep], tr=1.0, frames=2, image_size=32, audio_rate=8000, context=2.0, seed=int(ep[1:]))
from brainalign.cli import main
sys.exit(main())
"""


def _extract_setup(tmp_path, out):
    from brainalign.config import load_config
    from conftest import placeholder_stimuli

    toolkit = os.path.dirname(os.path.dirname(__import__("brainalign").__file__))
    driver = tmp_path / "extract_driver.py"
    driver.write_text(EXTRACT_DRIVER.format(toolkit=toolkit, tests=os.path.dirname(__file__)))
    data = {"name": "disk", "output": str(out), "data": {"root": str(tmp_path / "data"), "episodes": ["e1", "e2", "e3"],
                                                         "bold": {"tr": 1.0}},
            "model": {"conditions": ["joint", "no_vision"], "batch_size": 8,
                      "tiny": {"hidden": 32, "layers": 3, "heads": 4, "vocab": 512, "patch": 8, "n_mels": 16}},
            "windows": {"context": 2.0, "frames": 2, "image_size": 32, "audio_rate": 8000}}
    cfg = tmp_path / "disk.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    placeholder_stimuli(load_config(cfg))
    return [sys.executable, str(driver), "extract", str(cfg)]


def _one_error_line(p, verb):
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr and "Segmentation" not in p.stderr, p.stderr[-4000:]
    lines = [ln for ln in p.stderr.splitlines() if " INFO " not in ln and " WARNING " not in ln]
    assert len(lines) == 1 and lines[0].startswith(f"brainalign {verb}: error: "), lines
    return lines[0]


def test_extract_on_a_full_disk(tmp_path, tmpfs):
    mnt, fill = tmpfs
    out = mnt / "out"
    argv = _extract_setup(tmp_path, out)
    fill(30)                                  # room for about one episode's shard
    p = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300)
    line = _one_error_line(p, "extract")
    assert f"no space left on the device writing {out / 'features'}/e" in line and "free there" in line
    for f in (out / "features").glob("*"):     # what is there is complete; no temp files left
        assert not f.name.startswith(".") and is_complete(f), f
    assert not (out / "features.h5").exists()
    (mnt / "filler").unlink()
    again = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert is_complete(out / "features.h5")


def _fit_on(tmp_path, mnt):
    """The fit fixture (tests/test_fit.py) with its output on the tmpfs ``mnt``: (output, config)."""
    out, cfg = _setup(tmp_path, "fit")
    shutil.rmtree(out)
    make_fit_fixture(mnt / "out")
    cfg.write_text(cfg.read_text().replace(str(out), str(mnt / "out")))
    return mnt / "out", cfg


@pytest.mark.parametrize("keep_kb", [8, 40])
def test_fit_on_a_full_disk(tmp_path, tmpfs, keep_kb):
    """8 KB: the first shard part cannot be written; 40 KB: a later one or scores.h5."""
    mnt, fill = tmpfs
    out, cfg = _fit_on(tmp_path, mnt)
    fill(keep_kb)
    argv = [sys.executable, str(cfg.parent / "driver.py"), "fit", str(cfg)]
    p = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300)
    line = _one_error_line(p, "fit")
    assert "no space left on the device writing " + str(out) in line
    assert not is_complete(out / "scores.h5")
    assert all(is_complete(f) for f in (out / "fit_shards").glob("*")), list((out / "fit_shards").glob("*"))
    (mnt / "filler").unlink()
    assert subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300).returncode == 0
    assert is_complete(out / "scores.h5")


def test_read_only_output_folder(tmp_path, tmpfs):
    """Issue 23's EROFS case: exit 2, one line naming the folder; `status` still reads it."""
    mnt, _ = tmpfs
    out, cfg = _fit_on(tmp_path, mnt)
    assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)]).returncode == 0
    argv = [sys.executable, str(cfg.parent / "driver.py")]
    p = subprocess.run(argv + ["fit", str(cfg)], env=_env(), capture_output=True, text=True, timeout=300)
    assert _one_error_line(p, "fit") == f"brainalign fit: error: cannot write {out / '.brainalign.lock'}: " \
                                       "read-only file system"
    s = subprocess.run(argv + ["status", str(cfg), "--stages", "fit"], env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert s.returncode == 0 and "fit" in s.stdout


# ---- injected (no root needed) --------------------------------------------------------------------

HDF5_ENOSPC = ("Can't close dataset (file write failed: time = Sun Dec  6 03:47:58 2026\n, filename = '{f}', file "
               "descriptor = 3, errno = 28, error message = 'No space left on device', buf = 0x55ca4770b0f0, total "
               "write size = 888, bytes this sub-write = 888, offset = 20480)")


def test_hdf5_write_failure_is_one_line_naming_the_file(tmp_path):
    """h5py raises HDF5's failed writes as RuntimeError; atomic_h5 turns them into one OutputError and leaves
    no temp file."""
    path = tmp_path / "x.h5"
    with pytest.raises(OutputError) as e:
        with atomic_h5(path, "test", need=4096) as f:
            f.create_dataset("a", data=np.zeros(10))
            raise RuntimeError(HDF5_ENOSPC.format(f=f.filename))
    assert str(e.value).startswith(f"no space left on the device writing {path} (needs about 4.0 KB; ")
    assert "free there); free space (or point output elsewhere) and re-run" in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code,text", [(errno.ENOSPC, "no space left on the device writing /o/x"),
                                       (errno.EDQUOT, "no space left on the device writing /o/x"),
                                       (errno.EROFS, "cannot write /o/x: read-only file system"),
                                       (errno.EACCES, "cannot write /o/x: permission denied")])
def test_output_errors_are_classified(code, text):
    err = output_error(OSError(code, os.strerror(code), "/o/x"))
    assert isinstance(err, OutputError) and str(err).startswith(text)
    assert output_error(OSError(errno.ENOENT, "No such file", "/o/x")) is None
    assert output_error(ValueError("errno = 28")) is None
