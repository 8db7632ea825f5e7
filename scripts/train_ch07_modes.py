"""The five two-mode fits of lecture 7.3, "Why the reverse KL is mode-seeking" (checkpoints the notebook loads).

    .venv/bin/python scripts/train_ch07_modes.py        # about a minute on one thread

Fits a diagonal Gaussian and an IAF to the two-mode target by the reverse KL (the IAF from N(0, I) and from one
mode) and by maximum likelihood (forward KL), with the seeds below, and writes
``chapters/07_residual_continuous/results/vi_modes_<key>.pt``. Training runs here rather than in the notebook
because a few hundred Adam steps on a two-mode target amplify the last bits of the float sums: PyTorch's generic
CPU path and AVX2 end in different fits (tests/nbval run the notebook on both). Loading the committed weights
gives the same table on every CPU; ``tests/test_ch07_vi.py`` checks the weights against ``vi_modes.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from flowlib import Compose, Flow, InverseTransform, StandardNormal, load_checkpoint, save_checkpoint
from flowlib.targets import kl_estimate, reverse_kl
from flowlib.train import fit
from flowlib.transforms import ElementwiseAffine, iaf

OUT = Path(__file__).resolve().parents[1] / "chapters" / "07_residual_continuous" / "results"

CENTRES, SD = torch.tensor([[-2.5, 0.0], [2.5, 0.0]]), 0.5

def log_p_bimodal(x):                      # normalised: log Z = 0
    d2 = ((x[:, None, :] - CENTRES) / SD).pow(2).sum(-1)
    return torch.logsumexp(-0.5 * d2, 1) - math.log(2 * 2 * math.pi * SD**2)

def sample_bimodal(n, seed):
    g = torch.Generator().manual_seed(seed)
    return CENTRES[torch.randint(0, 2, (n,), generator=g)] + SD * torch.randn(n, 2, generator=g)

def reverse_fit(flow, steps, seed=0, lr=1e-2):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    for _ in range(steps):
        loss = reverse_kl(flow, log_p_bimodal, 256)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return flow.eval()

def gaussian_flow():                       # q = N(m, diag(s^2)): a diagonal affine map of the base
    return Flow(InverseTransform(ElementwiseAffine(2)), StandardNormal((2,)))

def iaf_on_one_mode():                     # an IAF whose samples are moved onto the right-hand mode
    start = ElementwiseAffine(2)
    with torch.no_grad():                  # wrapped in InverseTransform, it samples (z - shift) e^{log_scale}
        start.shift.copy_(-CENTRES[1] / SD)
        start.log_scale.fill_(math.log(SD))
    # Compose lists the normalizing order, so sampling runs the IAF first and the affine map last
    return Flow(Compose(InverseTransform(start), iaf(2, num_layers=4, hidden=(32, 32)).transform),
                StandardNormal((2,)))


def iaf_flow():
    return iaf(2, num_layers=4, hidden=(32, 32))


# key: (label in the lecture's table, builder, how it is fitted)
FITS = {
    "gauss_reverse": ("Gaussian, reverse KL", gaussian_flow, "reverse", 1000),
    "iaf_reverse": ("IAF, reverse KL, from N(0, I)", iaf_flow, "reverse", 800),
    "iaf_one_mode": ("IAF, reverse KL, from one mode", iaf_on_one_mode, "reverse", 800),
    "gauss_mle": ("Gaussian, forward KL (MLE)", gaussian_flow, "mle", 600),
    "iaf_mle": ("IAF, forward KL (MLE)", iaf_flow, "mle", 800),
}
MLE_SETTINGS = {"gauss_mle": {"lr": 5e-2}, "iaf_mle": {"lr": 5e-3}}


def train_one(key: str) -> Flow:
    _label, build, how, steps = FITS[key]
    torch.manual_seed(1)
    flow = build()
    if how == "reverse":
        return reverse_fit(flow, steps)
    fit(flow, sample_bimodal(20_000, seed=2), steps=steps, batch_size=512, progress=False, seed=0,
        **MLE_SETTINGS[key])
    return flow.eval()


def load_fits(folder: Path = OUT) -> dict[str, Flow]:
    """The committed fits, keyed by their labels in the lecture's table."""
    out = {}
    for key, (label, build, _how, _steps) in FITS.items():
        flow = build()
        load_checkpoint(flow, Path(folder) / f"vi_modes_{key}.pt")
        out[label] = flow.eval()
    return out


def measure(flow: Flow) -> dict[str, float]:
    """KL(q || p) with its se (seeded samples of q), KL(p || q) on 20,000 seeded samples of p, and q's mass at
    x1 > 0 (seeded)."""
    rev, rev_se = kl_estimate(flow, log_p_bimodal, 0.0, n=20_000, generator_seed=4)
    test_p = sample_bimodal(20_000, seed=3)
    with torch.no_grad():
        d = log_p_bimodal(test_p).double() - flow.log_prob(test_p).double()
        with torch.random.fork_rng():
            torch.manual_seed(5)
            right = (flow.sample(20_000)[:, 0] > 0).double().mean().item()
    return {"kl_qp": rev, "kl_qp_se": rev_se, "kl_pq": d.mean().item(),
            "kl_pq_se": (d.std() / math.sqrt(len(d))).item(), "mass_right": right}


def main():
    torch.set_num_threads(1)
    rows = {}
    for key in FITS:
        flow = train_one(key)
        save_checkpoint(flow, OUT / f"vi_modes_{key}.pt", fit=key)
        rows[key] = measure(flow)
        print(key, {k: round(v, 4) for k, v in rows[key].items()}, flush=True)
    (OUT / "vi_modes.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
