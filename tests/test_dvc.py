"""DVC wiring: the stage list, the remote, and push -> fresh clone -> pull restoring the outputs."""
import filecmp

import pytest
import yaml

from tests.conftest import REPO, run


def test_dvc_stages_read_only_known_param_keys():
    from qelm_core.config import Params

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages)[:2] == ["prepare", "teacher"]
    for name, stage in stages.items():
        assert stage["cmd"].startswith("qelm ")
        for key in stage.get("params", []):
            node = Params()
            for part in key.split("."):
                assert hasattr(node, part), f"dvc.yaml stage {name} lists unknown param {key}"
                node = getattr(node, part)


def test_repo_has_analytics_off_and_a_default_remote():
    config = (REPO / ".dvc" / "config").read_text()
    assert "analytics = false" in config and "remote = " in config


@pytest.mark.slow
def test_push_clone_pull_restores_outputs(tiny_repo, tmp_path):
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-f", "-d", "store", str(remote)], tiny_repo)
    run(["git", "add", "-A"], tiny_repo)
    run(["git", "commit", "-q", "-m", "repro + remote"], tiny_repo)
    run(["dvc", "push"], tiny_repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(tiny_repo), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    for folder in ("data/prepared", "data/teacher"):
        cmp = filecmp.dircmp(tiny_repo / folder, clone / folder)
        assert cmp.left_list == cmp.right_list and not cmp.diff_files and not cmp.funny_files
        _, mismatch, errors = filecmp.cmpfiles(tiny_repo / folder, clone / folder, cmp.common_files, shallow=False)
        assert not mismatch and not errors
    status = run(["dvc", "status"], clone).stdout
    assert "up to date" in status
