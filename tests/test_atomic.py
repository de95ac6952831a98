import numpy as np
import pytest

from epdo.atomic import atomic_path
from epdo.data import datasets


def test_concurrent_writers_of_one_file_each_finish_whole(tmp_path):
    target = tmp_path / "cache" / "data.npz"
    with atomic_path(target) as first:
        first.write_text("first")
        with atomic_path(target) as second:  # another process writing the same file meanwhile
            assert second != first
            second.write_text("second")
        assert target.read_text() == "second"
        first.write_text("first, whole")
    assert target.read_text() == "first, whole"
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.npz"]
    fresh = tmp_path / "fresh.txt"
    fresh.write_text("")
    assert target.stat().st_mode == fresh.stat().st_mode  # the permissions of any new file, not a temporary's 0600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "data.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.txt"]


def test_two_runs_filling_one_dataset_cache(tmp_path, monkeypatch):
    """A second process caching the same parsed dataset while the first is saving it (the race of two seeds' runs)."""
    arrays = (np.zeros((2, 1, 28, 28), np.float32), np.arange(2)), (np.ones((1, 1, 28, 28), np.float32), np.arange(1))
    target = tmp_path / "fashion_rot_seed3_n12000.npz"
    save = np.savez_compressed
    calls = []

    def save_while_another_run_saves(file, **values):
        calls.append(file)
        save(file, **values)
        if len(calls) == 1:  # the other run saves and renames before this one renames
            datasets._to_npz(target, *arrays)

    monkeypatch.setattr(datasets.np, "savez_compressed", save_while_another_run_saves)
    datasets._to_npz(target, *arrays)
    train, test = datasets._from_npz(target)
    assert train.images.shape == (2, 1, 28, 28) and test.labels.tolist() == [0]
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
