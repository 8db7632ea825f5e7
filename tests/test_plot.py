"""Plot helpers return figures, are deterministic, and the animation HTML is self-contained."""

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.animation import FuncAnimation  # noqa: E402

from flowlib import data, plot  # noqa: E402
from flowlib.distributions import StandardNormal  # noqa: E402
from flowlib.flow import Flow  # noqa: E402
from flowlib.transforms.base import Compose, Transform  # noqa: E402


class Affine(Transform):
    """Test helper: z = a * x + b (elementwise), log-det sum log|a|."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = torch.tensor(a), torch.tensor(b)
        self.event_shape = (2,)

    def _forward(self, x):
        return self.a * x + self.b, self.a.abs().log().sum().expand(x.shape[0])

    def _inverse(self, z):
        return (z - self.b) / self.a, -self.a.abs().log().sum().expand(z.shape[0])


class Shear(Transform):
    """Test helper: z = (x1, x2 + x1^2 / 4), log-det 0."""

    event_shape = (2,)

    def _forward(self, x):
        return torch.stack([x[:, 0], x[:, 1] + x[:, 0] ** 2 / 4], 1), x.new_zeros(x.shape[0])

    def _inverse(self, z):
        return torch.stack([z[:, 0], z[:, 1] - z[:, 0] ** 2 / 4], 1), z.new_zeros(z.shape[0])


@pytest.fixture
def flow():
    return Flow(
        Compose(Affine([2.0, 0.5], [0.3, -1.0]), Shear(), Affine([0.7, 1.2], [0.0, 0.5])), StandardNormal(2)
    )


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def pixels(fig):
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


def test_density_heatmap(flow):
    fig, ax = plot.density_heatmap(data.eight_gaussians_log_prob, grid=50)
    assert isinstance(fig, plt.Figure) and len(ax.images) == 1
    img = ax.images[0].get_array()
    assert img.shape == (50, 50) and np.isfinite(img).all()
    # rows follow y: the mixture is symmetric, and a shifted density moves the image
    fig2, ax2 = plot.density_heatmap(flow.log_prob, grid=40, bounds=((-5, 5), (-5, 5)))
    assert ax2.get_xlim() == (-5, 5)
    _, ax3 = plot.density_heatmap(lambda x: -((x - torch.tensor([2.0, 0.0])) ** 2).sum(1), grid=41)
    arr = ax3.images[0].get_array()
    assert np.unravel_index(np.argmax(arr), arr.shape) == (20, 30)  # (row = y = 0, column = x = 2)
    assert np.array_equal(
        pixels(fig), pixels(plot.density_heatmap(data.eight_gaussians_log_prob, grid=50)[0])
    )


def test_scatter_samples():
    fig, ax = plot.scatter_samples(data.two_moons(300), bounds=((-2, 3), (-2, 2)))
    assert len(ax.collections) == 1 and ax.get_xlim() == (-2, 3)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        plot.scatter_samples(torch.zeros(5, 3))


def test_plot_flow_layers(flow):
    z = StandardNormal(2).sample(200, generator=torch.Generator().manual_seed(0))
    fig, axes = plot.plot_flow_layers(flow, z, direction="inverse", max_cols=3)
    assert len(axes) == 6 and axes[0].get_title() == "base samples"
    assert [a.get_title() for a in axes[1:4]] == ["1: Affine", "2: Shear", "3: Affine"]
    # the last panel shows the generated samples
    offsets = axes[3].collections[0].get_offsets()
    with torch.no_grad():
        np.testing.assert_allclose(offsets, flow.transform.inverse(z)[0].numpy(), rtol=1e-5, atol=1e-5)
    assert not axes[4].axison and not axes[5].axison
    fig2, axes2 = plot.plot_flow_layers(flow, data.two_moons(100), direction="forward")
    assert axes2[0].get_title() == "input" and len(axes2) == 4
    assert np.array_equal(
        pixels(fig), pixels(plot.plot_flow_layers(flow, z, direction="inverse", max_cols=3)[0])
    )


def test_animate_flow_offline_html(flow):
    anim = plot.animate_flow(flow, frames=2, n_samples=100, seed=0)
    assert isinstance(anim, FuncAnimation)
    html = plot.to_html(anim)
    assert "<script" in html and "<img" in html
    assert not re.search(r"<script[^>]*src=[\"']?https?:", html)
    assert not re.search(r"(src|href)=[\"']?https?:", html), "the player must not load anything from a CDN"
    # 3 layers x 2 frames + the final frame, embedded as images
    assert html.count("data:image/png;base64") == 7
    with pytest.raises(ValueError, match="needs data points"):
        plot.animate_flow(flow, direction="forward")


def test_image_grid():
    images = data.digits("test")[:10]
    fig, ax = plot.image_grid(images, nrow=4)
    arr = ax.images[0].get_array()
    assert arr.shape == (3 * 9 + 1, 4 * 9 + 1)  # 3 rows of 4, 8x8 images, 1-pixel padding
    np.testing.assert_array_equal(arr[1:9, 1:9], images[0, 0].numpy())
    rgb = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    _, ax = plot.image_grid(rgb, nrow=5)
    assert ax.images[0].get_array().shape == (6, 26, 3)  # one row of five 4x4 RGB images
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        plot.image_grid(torch.zeros(2, 2, 4, 4))


def test_panels_fit_the_text_column():
    fig, axes = plot.panels(4, ncols=2)
    assert len(axes) == 4 and fig.get_size_inches()[0] == pytest.approx(plot.COLUMN_WIDTH)
    fig, axes = plot.panels(5, ncols=3)
    assert len(axes) == 5 and len(fig.axes) == 6 and not fig.axes[5].axison  # the unused sixth is off
    with pytest.raises(ValueError, match="COLUMN_WIDTH"):
        plot.panels(2, width=plot.COLUMN_WIDTH + 3)
    # a long row of images is drawn at the column's width, not 0.6 in per image
    fig, _ = plot.image_grid(torch.rand(32, 8, 8), nrow=16)
    assert fig.get_size_inches()[0] <= plot.COLUMN_WIDTH + 1e-9
    plt.close("all")


def test_categorical_colors_come_from_the_book_palette():
    assert plot.categorical_colors(3) == plot.PALETTE[:3]
    ten = plot.categorical_colors(10)
    assert len(ten) == 10 and len({tuple(np.round(c, 4)) for c in ten}) == 10


def test_markdown_table():
    md = plot.markdown_table(["model", "NLL"], [["a|b", "1.250"], ["c", 2]]).data
    assert md.splitlines() == ["| model | NLL |", "| :--- | ---: |", "| a\\|b | 1.250 |", "| c | 2 |"]
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        plot.markdown_table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="align"):
        plot.markdown_table(["a", "b"], [["x", "y"]], align="lx")


def test_stage_log_prob_runs_from_the_base_to_the_model(flow):
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    K = len(list(flow.transform))
    torch.testing.assert_close(plot.stage_log_prob(flow, 0)(x), flow.base.log_prob(x))
    torch.testing.assert_close(plot.stage_log_prob(flow, K)(x), flow.log_prob(x))
    torch.testing.assert_close(plot.stage_log_prob(flow, 0, "forward")(x), flow.log_prob(x))
    with pytest.raises(ValueError, match="k must be between"):
        plot.stage_log_prob(flow, K + 1)


def test_animation_with_density_and_font_free_player(flow):
    anim = plot.animate_flow(flow, frames=2, n_samples=100, seed=0, density=True, grid=20)
    fig = anim._fig
    assert len(fig.axes) == 2 and all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    assert fig.axes[1].images, "no density heat map"
    html = plot.to_html(anim)
    assert html.count("data:image/png;base64") == 7
    # every player button is an inline SVG icon: nothing that needs an icon font or a symbol glyph
    buttons = re.findall(r"<button[^>]*>(.*?)</button>", html, re.S)
    assert len(buttons) >= 9 and all("<svg" in b and 'class="fa' not in b for b in buttons)
    assert not re.search(r"[\u2190-\u2bff]", html), "a media symbol that many fonts lack"


def test_glow_and_multiscale_diagrams_show_the_shapes():
    """The chapter-6 diagrams: the shapes on them are those of ``MultiScale.level_shapes`` (digits Glow), they
    fit the text column, and bad shapes are refused."""
    from flowlib.plot import COLUMN_WIDTH, glow_step_diagram, multiscale_diagram

    fig, ax = glow_step_diagram((4, 4, 4))
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "ActNorm" in texts and "affine coupling" in texts and r"$2\times4\times4$ each" in texts
    assert fig.get_size_inches()[0] <= COLUMN_WIDTH
    plt.close(fig)
    fig, ax = multiscale_diagram((1, 8, 8), num_levels=3, steps_per_level=4)
    texts = " ".join(t.get_text() for t in ax.texts)
    for shape in ("4\\!\\times\\!4\\!\\times\\!4", "8\\!\\times\\!2\\!\\times\\!2", "16\\!\\times\\!1\\!\\times\\!1"):
        assert shape in texts
    assert "64 numbers" in texts
    assert sum("flow steps" in t.get_text() for t in ax.texts) == 3
    assert fig.get_size_inches()[0] <= COLUMN_WIDTH
    plt.close(fig)
    with pytest.raises(ValueError, match="even c"):
        glow_step_diagram((3, 4, 4))
    with pytest.raises(ValueError):
        multiscale_diagram((1, 8, 8), num_levels=0)
