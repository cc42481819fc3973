import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from qelm_core.config import TeacherParams
from qelm_core.llm import TeacherError, resolve_teacher
from qelm_core.lm.teacher import plan_windows


@pytest.mark.parametrize("n, window, stride", [(10, 4, 3), (100, 64, 48), (64, 64, 64), (5, 8, 2), (2, 2, 1)])
def test_windows_score_every_target_exactly_once_with_context(n, window, stride):
    plan = plan_windows(n, TeacherParams(window=window, stride=stride))
    scored = [t for start, end, first in plan for t in range(first, end)]
    assert scored == list(range(1, n))
    for start, end, first in plan:
        assert end - start <= window
        assert start == 0 or first - start >= window - stride


def test_shard_key_includes_the_scoring_code(tmp_path, monkeypatch):
    """A change to the code that scores shards (teacher.py, data.py's projection) must not be answered
    from shards an older version wrote."""
    import importlib

    from qelm_core import io
    from qelm_core.lm import teacher

    (tmp_path / "m.gguf").write_bytes(b"w")
    source = teacher.TeacherSource(tmp_path, "m.gguf")
    key = lambda: teacher.shard_dir(tmp_path, source, TeacherParams(), "v", "train", np.arange(10))  # noqa: E731
    before = key()
    assert key() == before
    (tmp_path / "scoring.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    scoring = importlib.import_module("scoring")
    digest = io.code_digest(scoring)
    (tmp_path / "scoring.py").write_text("x = 2\n")
    assert io.code_digest(scoring) != digest
    monkeypatch.setattr(io, "code_digest", lambda *modules: "other code")
    assert key() != before


def test_not_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"nope")
    with pytest.raises(TeacherError, match="is not a model"):
        resolve_teacher(str(tmp_path))


def test_broken_gguf_fails_to_load_with_one_line(tmp_path):
    from qelm_core.llm import load_teacher

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(TeacherError, match="cannot load") as info:
        load_teacher(resolve_teacher(str(bad)))
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_tiny_pipeline_teacher_beats_unigram_beats_uniform(tiny_repo):
    metrics = json.loads((tiny_repo / "metrics" / "teacher.json").read_text())
    assert metrics["ppl_uniform"] == 16
    assert metrics["ppl_teacher_test"] < metrics["ppl_unigram"] < metrics["ppl_uniform"]
    for split in ("train", "val", "test"):
        arrays = load_file(str(tiny_repo / "data" / "teacher" / f"{split}.safetensors"))
        prepared = load_file(str(tiny_repo / "data" / "prepared" / f"{split}.safetensors"))
        assert arrays["probs"].shape == (len(prepared["ids"]) - 1, 16)
        assert np.array_equal(arrays["targets"], prepared["ids"][1:])
        assert np.allclose(arrays["probs"].astype(np.float32).sum(1), 1, atol=1e-2)


@pytest.mark.slow
def test_teacher_resumes_from_shards_byte_identical(tiny_repo, tmp_path):
    from tests.conftest import run

    before = {p.name: p.read_bytes() for p in (tiny_repo / "data" / "teacher").iterdir()}
    shards = sorted((tiny_repo / "data" / ".shards").glob("train-*/shard-*.safetensors"))
    assert len(shards) >= 2
    shards[-1].unlink()  # as if killed before the last shard was written
    run(["qelm", "teacher"], tiny_repo)
    after = {p.name: p.read_bytes() for p in (tiny_repo / "data" / "teacher").iterdir()}
    assert before == after


@pytest.mark.slow
def test_second_repro_is_a_noop(tiny_repo):
    from tests.conftest import run

    out = run(["dvc", "repro"], tiny_repo).stdout
    assert "didn't change, skipping" in out and "Running stage" not in out
