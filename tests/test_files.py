"""sslvit.files: a folder replaced by another is, at every moment a kill can find, the old one or the new one whole."""

import pytest

from sslvit import files
from sslvit.files import REPLACED, TMP_PREFIX, remove_partial_writes, replace_folder


def folder(path, text: str):
    path.mkdir()
    (path / "shard").write_text(text)
    return path


@pytest.mark.parametrize("before", ["folder", "file", "nothing"])
def test_replace_folder_puts_the_new_folder_in_place(tmp_path, before):
    last = tmp_path / "last.ckpt"
    if before == "folder":
        folder(last, "old")
    elif before == "file":
        last.write_text("a one-file checkpoint")
    replace_folder(folder(tmp_path / f"{TMP_PREFIX}last.ckpt", "new"), last)
    assert (last / "shard").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_kill_between_the_two_renames_leaves_the_old_folder_which_comes_back(tmp_path, monkeypatch):
    last, new = folder(tmp_path / "last.ckpt", "old"), folder(tmp_path / f"{TMP_PREFIX}last.ckpt", "new")
    real = files.Path.rename

    def killed(self, target):
        if self == new:
            raise KeyboardInterrupt  # the job ends here: the old folder moved away, the new one not yet in place
        return real(self, target)

    monkeypatch.setattr(files.Path, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        replace_folder(new, last)
    monkeypatch.undo()
    assert not last.exists() and (tmp_path / f"last.ckpt{REPLACED}").is_dir()
    remove_partial_writes(tmp_path)  # what the next fit does first
    assert (last / "shard").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_kill_after_the_new_folder_is_in_place_keeps_the_new_one(tmp_path):
    last = folder(tmp_path / "last.ckpt", "new")
    folder(tmp_path / f"last.ckpt{REPLACED}", "old")  # the old one was not removed yet
    remove_partial_writes(tmp_path)
    assert (last / "shard").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
