"""One save/load for every model of the package (LM students, classifiers): folder/model.safetensors +
folder/config.json, the folder replaced atomically. Reading goes through safetensors only, so a
pickle (or torch.save) payload is rejected as a bad header and never executed. Every failure is one
QelmError line naming the file and the fix (`fix`: which stage to re-run)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .config import QelmError
from .io import atomic_dir, atomic_write_json

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


def save_folder(folder: str | Path, model: torch.nn.Module, config: dict, fmt: str) -> Path:
    """model.state_dict() (buffers too) + {"format": fmt, **config} -> folder, atomically."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})  # one key: safetensors writes a multi-key header in random order (bytes would differ run to run)
        atomic_write_json(tmp / CONFIG_FILE, {"format": fmt, **config})
    return Path(folder)


def folder_digest(folder: str | Path) -> str:
    """sha256 of a saved model's two files: the same weights and config give the same digest, so the
    MLflow run that trained a model is found from the model itself (tracking.pipeline_run)."""
    h = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()


def tree_digest(root: str | Path) -> str:
    """sha256 over every saved model folder below `root`, by relative path (the classifiers' models/)."""
    h = hashlib.sha256()
    for config in sorted(Path(root).rglob(CONFIG_FILE)):
        h.update(f"{config.parent.relative_to(root)}\0{folder_digest(config.parent)}\n".encode())
    return h.hexdigest()


def read_folder(folder: str | Path, fmt: str, fix: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """-> (config, tensors) of a folder written by save_folder with format `fmt`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (cfg_path, w_path):
        if not path.is_file():
            raise QelmError(f"{path}: missing; {fix}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise QelmError(f"{cfg_path}: not valid JSON ({err}); {fix}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != fmt:
        raise QelmError(f"{cfg_path}: not a {fmt} config; {fix}")
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise QelmError(f"{w_path}: corrupt or truncated safetensors file ({first}); {fix}") from None
    return cfg, state


def load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor], folder: str | Path, fix: str) -> torch.nn.Module:
    """Load `state` into `model` (rebuilt from the config) strictly; a mismatch names the tensors."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs {expected[k]}" for k in sorted(set(expected) & set(state))
              if tuple(state[k].shape) != expected[k]]
    if missing or unexpected or shapes:
        parts = [f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
                 f"shape {', '.join(shapes)}" if shapes else ""]
        detail = "; ".join(p for p in parts if p)
        raise QelmError(f"{Path(folder) / WEIGHTS_FILE}: weights do not match {CONFIG_FILE} ({detail}); {fix}")
    model.load_state_dict(state, strict=True)
    return model
