"""The training loop (histories, NaN reporting, early stopping) and checkpoints."""

import pytest
import torch

from flowlib.distributions import DiagGaussian, FullGaussian
from flowlib.io import load_checkpoint, save_checkpoint
from flowlib.train import evaluate, fit


def gaussian_data(n=2000, mean=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) * 0.5 + mean


def test_fit_history_and_convergence():
    x = gaussian_data(mean=1.0)
    model = DiagGaussian(torch.zeros(2), torch.zeros(2), trainable=True)
    h = fit(model, x, steps=400, batch_size=256, lr=0.05, progress=False, log_every=7)
    assert h["steps"] == 400 and len(h["train_loss"]) == 400
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert h["val_loss"] == [] and h["best_step"] is None and h["wall_time"] > 0
    torch.testing.assert_close(model.loc.detach(), x.mean(0), atol=0.03, rtol=0)
    # epochs: ceil(2000 / 512) = 4 steps per epoch
    h = fit(DiagGaussian(torch.zeros(2), torch.zeros(2), trainable=True), x, epochs=3, progress=False)
    assert h["steps"] == 12


def test_fit_is_seeded():
    x = gaussian_data()
    runs = []
    for _ in range(2):
        model = DiagGaussian(torch.zeros(2), torch.zeros(2), trainable=True)
        runs.append(fit(model, x, steps=30, batch_size=64, seed=3, progress=False)["train_loss"])
    assert runs[0] == runs[1]
    model = DiagGaussian(torch.zeros(2), torch.zeros(2), trainable=True)
    assert fit(model, x, steps=30, batch_size=64, seed=4, progress=False)["train_loss"] != runs[0]


def test_fit_raises_naming_the_step_on_nan():
    x = gaussian_data()
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss = -model.log_prob(batch).mean()
        return loss * float("nan") if calls["n"] == 8 else loss  # the 8th step is step 7

    model = DiagGaussian(torch.zeros(2), torch.zeros(2), trainable=True)
    with pytest.raises(FloatingPointError, match="step 7"):
        fit(model, x, steps=100, batch_size=64, loss_fn=loss_fn, log_every=25, progress=False)


def test_fit_raises_on_inf_with_lr_too_large():
    # the first step sends log_scale to -1e6: the loss of step 1 is +inf
    model = DiagGaussian(torch.zeros(2), torch.zeros(2), trainable=True)
    with pytest.raises(FloatingPointError, match="became inf at step 1"):
        fit(model, gaussian_data(), steps=50, batch_size=64, lr=1e6, progress=False, log_every=5)


def test_early_stopping_restores_best():
    """Train data around 0, validation data around 1.5, start at 3: the validation loss improves while loc
    passes 1.5, then worsens; early stopping must stop and restore the best parameters."""
    train_x, val_x = gaussian_data(mean=0.0, seed=1), gaussian_data(mean=1.5, seed=2)
    model = DiagGaussian(torch.full((2,), 3.0), torch.zeros(2), trainable=True)
    h = fit(
        model,
        train_x,
        val_data=val_x,
        steps=3000,
        batch_size=500,
        lr=0.02,
        eval_every=10,
        patience=5,
        progress=False,
    )
    assert h["stopped_early"] and h["steps"] < 3000
    assert h["best_step"] == h["val_step"][h["val_loss"].index(min(h["val_loss"]))]
    assert h["best_step"] == h["val_step"][-6]  # five non-improving evaluations after the best one
    assert evaluate(model, val_x) == pytest.approx(h["best_val_loss"], abs=1e-6)
    assert evaluate(model, val_x) < h["val_loss"][-1]


def test_fit_bad_arguments():
    x = gaussian_data()
    m = DiagGaussian(torch.zeros(2), torch.zeros(2), trainable=True)
    with pytest.raises(ValueError, match="lr must be positive"):
        fit(m, x, steps=1, lr=-1.0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fit(m, x, steps=1, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="exactly one of steps or epochs"):
        fit(m, x, steps=1, epochs=1, progress=False)
    with pytest.raises(ValueError, match="patience .* needs val_data"):
        fit(m, x, steps=1, patience=2, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        fit(m, torch.full((3, 2), float("nan")), steps=1, progress=False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(DiagGaussian(torch.zeros(2), torch.zeros(2), trainable=False), x, steps=1, progress=False)
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(m, x, steps=1, lr_schedule="step", progress=False)


def test_fit_float64():
    x = gaussian_data().double()
    m = FullGaussian(torch.zeros(2, dtype=torch.float64), cov=torch.eye(2, dtype=torch.float64), trainable=True)
    h = fit(m, x, steps=20, progress=False)
    assert m.loc.dtype == torch.float64 and len(h["train_loss"]) == 20


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    m = FullGaussian(torch.randn(3, generator=g), cov=torch.eye(3) * 2)
    path = save_checkpoint(m, tmp_path / "sub" / "model.pt", step=10, note="test", losses=[1.0, 0.5])
    raw = torch.load(path, weights_only=True)  # plain tensors and values only
    assert set(raw["state_dict"]) == set(m.state_dict())
    other = FullGaussian(torch.zeros(3), cov=torch.eye(3))
    meta = load_checkpoint(other, path)
    assert meta == {"step": 10, "note": "test", "losses": [1.0, 0.5]}
    for k, v in m.state_dict().items():
        torch.testing.assert_close(other.state_dict()[k], v)
    # loading keeps the target's dtype
    other64 = FullGaussian(torch.zeros(3, dtype=torch.float64), cov=torch.eye(3, dtype=torch.float64))
    load_checkpoint(other64, path)
    assert other64.loc.dtype == torch.float64


def test_checkpoint_errors(tmp_path):
    m = FullGaussian(torch.zeros(3), cov=torch.eye(3))
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_checkpoint(m, tmp_path / "missing.pt")
    path = save_checkpoint(m, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"shape mismatches: loc: checkpoint \(3,\) vs model \(2,\)"):
        load_checkpoint(FullGaussian(torch.zeros(2), cov=torch.eye(2)), path)
    with pytest.raises(ValueError, match="missing keys .*unexpected keys"):
        load_checkpoint(DiagGaussian(torch.zeros(3), torch.zeros(3)), path)
    with pytest.raises(ValueError, match="meta\\['bad'\\] must be"):
        save_checkpoint(m, tmp_path / "x.pt", bad=object())
    torch.save({"something": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a flowlib checkpoint"):
        load_checkpoint(m, tmp_path / "foreign.pt")
