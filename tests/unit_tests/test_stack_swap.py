"""Stack saves killed at every moment (issue 26, class 7): a stack always loads afterwards, leftovers go.

The kills are real: a child process saves and is killed with ``os._exit`` (no cleanup runs, as with
SIGKILL) at one chosen point of the swap.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from langchain_fslm import stack_swap
from langchain_fslm.manifest import load_manifest
from langchain_fslm.stack_swap import MANIFEST_FILE, recover, write_stack_atomically


def _fill(version: str):
    def fill(tmp: Path) -> None:
        (tmp / "adapters" / "intent").mkdir(parents=True)
        (tmp / "adapters" / "intent" / "weights.txt").write_text(version)
        manifest = {"name": version, "stages": [{"name": "intent", "prompt": "{input}"}]}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest))

    return fill


def _hidden(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")
    )


def _save_and_die(folder: str, point: str, exchange: bool) -> None:
    """Child process: save version 'new', dying (no cleanup) at ``point``."""
    if not exchange:
        stack_swap._exchange = lambda a, b: False  # the two-rename path of systems without an exchange
    real_replace, real_exchange = os.replace, stack_swap._exchange
    calls = {"replace": 0}

    def replace(src, dst):
        calls["replace"] += 1
        if point == f"replace{calls['replace']}":
            os._exit(9)
        real_replace(src, dst)
        if point == f"after_replace{calls['replace']}":
            os._exit(9)

    def exchange(a, b):
        done = real_exchange(a, b)
        if point == "after_exchange":
            os._exit(9)
        return done

    def fill(tmp: Path) -> None:
        _fill("new")(tmp)
        if point == "fill":
            os._exit(9)

    stack_swap.os.replace = replace  # type: ignore[assignment]
    stack_swap._exchange = exchange
    write_stack_atomically(folder, fill)
    os._exit(0)


POINTS = [
    ("fill", True),
    ("after_exchange", True),
    ("fill", False),
    ("replace1", False),
    ("after_replace1", False),
    ("replace2", False),
    ("after_replace2", False),
]


@pytest.mark.parametrize(("point", "exchange"), POINTS)
def test_a_save_killed_anywhere_leaves_a_loadable_stack_and_the_next_save_cleans_up(
    tmp_path, point, exchange
):
    folder = tmp_path / "stack"
    write_stack_atomically(folder, _fill("old"))
    child = multiprocessing.get_context("fork").Process(
        target=_save_and_die, args=(str(folder), point, exchange)
    )
    child.start()
    child.join(30)
    assert child.exitcode in (0, 9)
    name = load_manifest(folder).name  # loads (restoring the old stack if the kill fell between renames)
    assert name in ("old", "new")
    assert (folder / "adapters" / "intent" / "weights.txt").read_text() == name  # never a mix
    write_stack_atomically(folder, _fill("newer"))
    assert load_manifest(folder).name == "newer"
    assert _hidden(folder) == []


def test_a_missing_stack_with_its_old_copy_beside_it_is_restored(tmp_path):
    folder = tmp_path / "stack"
    write_stack_atomically(folder, _fill("old"))
    os.replace(folder, tmp_path / ".stack.old-1234abcd")  # what a kill between the two renames leaves
    (tmp_path / ".stack.tmp-99999999").mkdir()  # and a half-built new stack (no pid: an old save)
    (tmp_path / f".stack.tmp-{2**22 + 7}-0000abcd").mkdir()  # a save of a process that is gone
    assert recover(folder) is True
    assert load_manifest(folder).name == "old"
    assert _hidden(folder) == []


def test_leftovers_of_the_earlier_layout_are_restored_too(tmp_path):
    folder = tmp_path / "stack"
    write_stack_atomically(folder, _fill("old"))
    (tmp_path / ".stack.old-abc").mkdir()
    os.replace(folder, tmp_path / ".stack.old-abc" / "stack")  # saves before this fix nested it
    assert load_manifest(folder).name == "old"
    assert _hidden(folder) == []


def test_saving_over_a_stack_keeps_the_files_it_does_not_write(tmp_path):
    folder = tmp_path / "stack"
    write_stack_atomically(folder, _fill("old"))
    (folder / "README.md").write_text("my notes")
    (folder / "eval").mkdir()
    (folder / "eval" / "summary.json").write_text("{}")
    (folder / "training_log.json").write_text('{"old": true}')
    (folder / "adapters" / "stale").mkdir()

    def fill(tmp: Path) -> None:
        _fill("new")(tmp)
        (tmp / "training_log.json").write_text('{"new": true}')  # what the new stack writes wins

    write_stack_atomically(folder, fill)
    assert (folder / "README.md").read_text() == "my notes"
    assert (folder / "eval" / "summary.json").read_text() == "{}"
    assert json.loads((folder / "training_log.json").read_text()) == {"new": True}
    assert not (folder / "adapters" / "stale").exists()  # adapters/ is the stack's own, replaced whole
    assert _hidden(folder) == []


def test_the_atomic_exchange_is_used_where_the_os_has_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    if not stack_swap._exchange(a, b):
        pytest.skip("no renameat2 exchange on this system")
    assert (b / "x").read_text() == "a"


def test_a_running_save_of_another_process_keeps_its_folder(tmp_path):
    folder = tmp_path / "stack"
    write_stack_atomically(folder, _fill("old"))
    busy = tmp_path / f".stack.tmp-{os.getppid()}-0000abcd"  # the parent process is alive
    busy.mkdir()
    write_stack_atomically(folder, _fill("new"))
    assert busy.is_dir()
