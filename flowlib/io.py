"""Checkpoints: a model's ``state_dict`` plus plain metadata, readable by ``torch.load(weights_only=True)``.

The file holds a dict ``{"format", "model_class", "state_dict", "meta"}`` of tensors and plain Python
values only (no pickled classes), so it loads safely with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["save_checkpoint", "load_checkpoint"]

FORMAT = "flowlib-checkpoint-v1"
_PLAIN = (type(None), bool, int, float, str, torch.Tensor)


def _check_meta(value, where: str = "meta") -> None:
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_meta(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where} keys must be strings, got {k!r}")
            _check_meta(v, f"{where}[{k!r}]")
        return
    raise ValueError(
        f"{where} must be None, bool, int, float, str, a tensor, or a list/tuple/dict of those, "
        f"got {type(value).__name__}"
    )


def save_checkpoint(model: torch.nn.Module, path, **meta) -> Path:
    """Save ``model.state_dict()`` (moved to CPU) and ``meta`` (plain values, e.g. ``step=1000``) to ``path``.

    Creates missing parent folders; returns the path.
    """
    _check_meta(meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {"format": FORMAT, "model_class": type(model).__name__, "state_dict": state, "meta": meta}, path
    )
    return path


def load_checkpoint(model: torch.nn.Module, path) -> dict:
    """Load a ``save_checkpoint`` file into ``model`` in place (keeping its device, dtype); return ``meta``.

    Raises ``FileNotFoundError`` if there is no file, and ``ValueError`` listing the missing, unexpected
    and wrongly shaped entries if the checkpoint does not fit the model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a flowlib checkpoint (expected format {FORMAT!r})")
    state, own = ckpt["state_dict"], model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & state.keys()
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        if shapes:
            problems.append("shape mismatches: " + "; ".join(sorted(shapes)))
        raise ValueError(
            f"checkpoint {str(path)!r} (saved from {ckpt.get('model_class')}) does not fit "
            f"{type(model).__name__}: " + ", ".join(problems)
        )
    model.load_state_dict(state)
    return ckpt["meta"]
