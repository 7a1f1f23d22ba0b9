"""`acol.io` folder swaps under fault injection: the writer is SIGKILLed at every line of the swap.

Each case starts from a complete output (version v1 plus DVC's ``.gitignore``), runs a writer of v2 in a child
process that kills itself the first time it reaches one chosen line of `replacing_dir` / `replace_dir` /
`recover_dir` / `_exchange` (or the n-th file deletion inside them), then checks what a reader finds (a complete
v1 or v2, never a mix and never nothing) and that the next writer (v3) cleans every leftover. Both the atomic
exchange and the two-rename fallback (for filesystems without ``RENAME_EXCHANGE``) are injected.
"""

from __future__ import annotations

import dis
import inspect
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from acol import io

REPO = Path(__file__).resolve().parents[1]
FILES = ("a.txt", "b.txt", "sub/c.txt")
GITIGNORE = b"/maps\n"

# The child: write version argv[3] into argv[1] with `replacing_dir`, killing itself at the chosen point.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import acol.io as io

    final, mode, version, where = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    if mode == "fallback":
        io._exchange_supported = False
    kind, _, value = where.partition(":")

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if kind == "line":
        name, line = value.split("@")
        code = getattr(io, name)
        code = getattr(code, "__wrapped__", code).__code__

        def tracer(frame, event, arg):
            if frame.f_code is not code:
                return None
            if event == "line" and frame.f_lineno == int(line):
                die()
            return tracer

        sys.settrace(tracer)
    elif kind == "unlink":  # the n-th file deletion (inside shutil.rmtree)
        real, count = os.unlink, [0]

        def unlink(*args, **kwargs):
            count[0] += 1
            if count[0] == int(value):
                die()
            return real(*args, **kwargs)

        os.unlink = unlink
    with io.replacing_dir(final, keep=(".gitignore",)) as tmp:
        for name in ("a.txt", "b.txt", "sub/c.txt"):
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(f"{version}:{name}")
    """
)


def _lines(name: str) -> list[int]:
    """Every line of function `name` in `acol.io` where the interpreter starts a statement (the def excluded)."""
    func = getattr(io, name)
    func = getattr(func, "__wrapped__", func)
    first = inspect.getsourcelines(func)[1]
    return sorted({line for _, line in dis.findlinestarts(func.__code__) if line and line > first})


INJECTIONS = [
    f"line:{name}@{line}"
    for name in ("replacing_dir", "replace_dir", "recover_dir", "_exchange")
    for line in _lines(name)
] + [f"unlink:{n}" for n in (1, 2, 3)]


def _content(version: str) -> dict[str, bytes]:
    return {".gitignore": GITIGNORE, **{name: f"{version}:{name}".encode() for name in FILES}}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _write(final: Path, version: str, mode: str, where: str = "none:") -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(final), mode, version, where],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
    return proc.returncode


def test_every_line_of_the_swap_is_instrumented() -> None:
    """Guards the test itself: the injection points cover the swap, rename and deletion lines."""
    assert len(INJECTIONS) > 30
    source = inspect.getsource(io.replace_dir)
    assert "_exchange(tmp_dir, final_dir)" in source and "os.replace(final_dir, old)" in source


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_a_kill_at_any_step_leaves_a_complete_output_and_the_next_run_cleans_up(
    mode: str, tmp_path: Path
) -> None:
    killed = 0
    for n, where in enumerate(INJECTIONS):
        final = tmp_path / str(n) / "out"
        final.mkdir(parents=True)
        for name, data in _content("v1").items():
            (final / name).parent.mkdir(parents=True, exist_ok=True)
            (final / name).write_bytes(data)

        rc = _write(final, "v2", mode, where)
        killed += rc == -signal.SIGKILL
        found = io.readable_path(final)
        state = _snapshot(found) if found.is_dir() else {}
        assert state in (_content("v1"), _content("v2")), f"{mode}, killed at {where}: {sorted(state)}"
        if mode == "exchange":  # no instant without the folder itself
            assert final.is_dir() and _snapshot(final) == state, f"killed at {where}"

        assert _write(final, "v3", mode) == 0  # the next run recovers and replaces
        assert _snapshot(final) == _content("v3"), f"{mode}, after a kill at {where}"
        assert sorted(p.name for p in final.parent.iterdir()) == ["out"], f"leftovers after {where}"
    print(f"{mode}: killed at {killed} of {len(INJECTIONS)} injection points (the rest are off this path)")
    assert killed > len(INJECTIONS) // 2  # most injection points are on this mode's path


def test_the_old_copy_is_restored_not_deleted(tmp_path: Path) -> None:
    """The defect of the two-rename swap: killed between its renames, the next call deleted the only copy."""
    final = tmp_path / "out"
    old = tmp_path / ".out.old"
    old.mkdir()
    (old / "a.txt").write_text("only copy")
    assert io.readable_path(final / "a.txt") == old / "a.txt"  # a reader finds it meanwhile
    new = tmp_path / "new"
    new.mkdir()
    (new / "a.txt").write_text("new")
    io.replace_dir(new, final)
    assert (final / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    io.recover_dir(tmp_path / "elsewhere")  # nothing to recover: a no-op
    old.mkdir()
    (old / "a.txt").write_text("only copy")
    final_tmp = tmp_path / ".out.tmp-partial"
    final_tmp.mkdir()
    import shutil

    shutil.rmtree(final)
    io.recover_dir(final)
    assert (final / "a.txt").read_text() == "only copy" and not final_tmp.exists()


@pytest.fixture
def umask_077():
    """A private umask for one test (restored after): what a user with ``umask 077`` gets."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_new_files_and_folders_follow_the_umask(tmp_path: Path, umask_077: None) -> None:
    """Before: every output was forced to 0644 / 0755, readable by all whatever the user's umask said."""
    io.write_text_atomic(tmp_path / "a.txt", "x")
    with io.atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"y")
    with io.replacing_dir(tmp_path / "out") as tmp:
        (tmp / "c.txt").write_text("z")
    with io.resumable_dir(tmp_path / "parts", {"n": 1}) as (work, _):
        (work / "p.txt").write_text("p")
    assert _mode(tmp_path / "a.txt") == 0o600 and _mode(tmp_path / "b.bin") == 0o600
    assert _mode(tmp_path / "out") == 0o700 and _mode(tmp_path / "parts") == 0o700
    os.umask(0o002)  # a group-writable umask (shared project folders) is honoured too, not narrowed to 0644
    io.write_text_atomic(tmp_path / "g.txt", "x")
    with io.replacing_dir(tmp_path / "gout") as tmp:
        pass
    assert _mode(tmp_path / "g.txt") == 0o664 and _mode(tmp_path / "gout") == 0o775


def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record, in order, every fsync (with the path its descriptor names) and every rename."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst, *args, **kwargs) -> None:
        events.append(("rename", str(dst)))
        real_replace(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs) -> None:
        events.append(("rename", str(dst)))
        real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name descriptors")
def test_renames_are_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A power cut after a rename must not leave an empty file or lose the rename: the data is synced before
    it, the folder holding the new name after it. Before: `atomic_path` (pyarrow, torch.save) synced nothing,
    and no folder was ever synced."""
    events = _record_syncs(monkeypatch)
    with io.atomic_path(tmp_path / "m.parquet") as tmp:
        tmp.write_bytes(b"rows")
    rename = events.index(("rename", str(tmp_path / "m.parquet")))
    assert [e for e in events[:rename] if e[0] == "fsync" and e[1].startswith(str(tmp_path / ".m.parquet."))]
    assert ("fsync", str(tmp_path)) in events[rename + 1 :]

    events.clear()
    io.write_json_atomic(tmp_path / "sub" / "j.json", {"a": 1})
    rename = events.index(("rename", str(tmp_path / "sub" / "j.json")))
    assert any(e[0] == "fsync" and "/.j.json." in e[1] for e in events[:rename])
    assert ("fsync", str(tmp_path / "sub")) in events[rename + 1 :]

    for exchange in (None, False):  # the atomic exchange, then the two-rename fallback
        monkeypatch.setattr(io, "_exchange_supported", exchange)
        events.clear()
        with io.replacing_dir(tmp_path / "out") as tmp:
            (tmp / "inner").mkdir()
            (tmp / "inner" / "f.txt").write_text("written directly, not through atomic_path")
        synced = [path for kind, path in events if kind == "fsync"]
        # the folder's content before the swap, and the parent after it
        assert any(p.endswith("/inner/f.txt") for p in synced), synced
        assert synced[-1] == str(tmp_path), synced
        assert (tmp_path / "out" / "inner" / "f.txt").read_text().startswith("written")

    events.clear()
    io.write_bytes_atomic(tmp_path / "bulk.jpg", b"img", durable=False)  # bulk outputs opt out, as before
    assert not [e for e in events if e[0] == "fsync"]
