"""Plots for the book (matplotlib only): densities, samples, what each flow layer does, image grids.

Every function is deterministic (randomness only through ``seed``) and returns the figure and axes it
drew on (``animate_flow`` returns a ``FuncAnimation``; ``to_html`` turns it into self-contained HTML).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.animation import FuncAnimation

from flowlib._validate import check_int, check_tensor
from flowlib.transforms.base import Compose

__all__ = [
    "BOOK_STYLE",
    "PALETTE",
    "use_book_style",
    "density_heatmap",
    "scatter_samples",
    "plot_flow_layers",
    "COLUMN_WIDTH",
    "panels",
    "categorical_colors",
    "stage_log_prob",
    "animate_flow",
    "to_html",
    "image_grid",
    "markdown_table",
    "glow_step_diagram",
    "multiscale_diagram",
]

DEFAULT_BOUNDS = ((-4.0, 4.0), (-4.0, 4.0))

#: Okabe-Ito colours: distinguishable with every common colour-vision deficiency, and on white or dark pages.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

#: The one figure style of the book. Figures are drawn at 150 dpi so that text stays sharp when the theme
#: scales them into the text column; fonts are sized for a figure about as wide as the column (6-8 inches);
#: backgrounds are opaque white so that black text stays readable in the theme's dark mode.
BOOK_STYLE = {
    "figure.dpi": 150,
    "savefig.dpi": 150,
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.transparent": False,
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 13,
    "axes.prop_cycle": plt.cycler(color=PALETTE),
    "image.cmap": "viridis",
}


def use_book_style() -> None:
    """Apply :data:`BOOK_STYLE` to matplotlib (done when ``flowlib.plot`` is imported; call again after
    ``plt.rcdefaults()``)."""
    plt.rcParams.update(BOOK_STYLE)


use_book_style()


#: Width in inches of a figure that fills the book's text column (about 690 CSS pixels) without shrinking its
#: text below ~60 % of the size it was drawn at: 7 in at 150 dpi is 1050 px, shown at 690 px (66 %).
COLUMN_WIDTH = 7.0


def panels(n: int, ncols: int | None = None, aspect: float = 1.0, width: float = COLUMN_WIDTH, **kwargs):
    """A figure of ``n`` panels sized for the book's text column: at most ``ncols`` panels a row (default 2 for
    ``n`` = 4, otherwise up to 3), ``width`` inches wide in all, each panel ``aspect`` times as high as wide.
    Unused axes are switched off. ``kwargs`` go to ``plt.subplots`` (e.g. ``sharex``, ``gridspec_kw``).
    Returns ``(fig, axes)`` with ``axes`` a flat array of ``n`` axes.

    A row of four panels drawn 13 in wide and shown in a 690 px column shrinks 11 pt text to 5 px; two rows of
    two at 7 in keep it at about 15 px.
    """
    n = check_int(n, "n")
    if ncols is None:
        ncols = 2 if n == 4 else min(n, 3)
    ncols = min(check_int(ncols, "ncols"), n)
    if width > COLUMN_WIDTH + 1e-9:
        raise ValueError(f"width must be at most COLUMN_WIDTH = {COLUMN_WIDTH} in (the text column), got {width}")
    nrows = math.ceil(n / ncols)
    panel_w = width / ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, nrows * panel_w * aspect + 0.3), squeeze=False,
                             **kwargs)
    axes = axes.ravel()
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


def categorical_colors(n: int) -> list:
    """``n`` colours for categories: the book's :data:`PALETTE` while it lasts (8), else ``n`` evenly spaced
    colours of its colour map (viridis), which stay ordered and distinguishable in grey scale."""
    n = check_int(n, "n")
    if n <= len(PALETTE):
        return PALETTE[:n]
    cmap = plt.get_cmap(BOOK_STYLE["image.cmap"])
    return [cmap(i / (n - 1)) for i in range(n)]


def _axes(ax, figsize=(4, 4)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    return ax.figure, ax


def _like(obj):
    """dtype and device to evaluate ``obj`` with: those of its first parameter/buffer, else float32 CPU."""
    if isinstance(obj, torch.nn.Module):
        for t in list(obj.parameters()) + list(obj.buffers()):
            if t.is_floating_point():
                return t.dtype, t.device
    return torch.float32, torch.device("cpu")


def _np(t):
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def density_heatmap(log_prob_fn, ax=None, bounds=DEFAULT_BOUNDS, grid: int = 200, cmap: str = "viridis"):
    """Draw ``exp(log_prob_fn(x))`` on a ``grid x grid`` lattice over ``bounds = ((x0, x1), (y0, y1))``.

    ``log_prob_fn`` maps a ``(B, 2)`` tensor to ``(B,)`` log-densities (a model's ``log_prob``, a model, or
    e.g. ``flowlib.data.two_moons_log_prob``); it runs under ``torch.no_grad()`` in the model's dtype and
    device. Returns ``(fig, ax)``.
    """
    check_int(grid, "grid", minimum=2)
    (x0, x1), (y0, y1) = bounds
    dtype, device = _like(getattr(log_prob_fn, "__self__", log_prob_fn))
    xs = torch.linspace(x0, x1, grid, dtype=dtype, device=device)
    ys = torch.linspace(y0, y1, grid, dtype=dtype, device=device)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")  # rows follow y
    points = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
    with torch.no_grad():
        log_p = torch.cat([log_prob_fn(chunk) for chunk in points.split(16384)])
    fig, ax = _axes(ax)
    ax.imshow(
        _np(log_p.exp().reshape(grid, grid)),
        origin="lower",
        extent=(x0, x1, y0, y1),
        cmap=cmap,
        aspect="auto",
        interpolation="nearest",
    )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    if not ax.get_xlabel():
        ax.set_xlabel("$x_1$")
    if not ax.get_ylabel():
        ax.set_ylabel("$x_2$")
    return fig, ax


def scatter_samples(samples, ax=None, bounds=None, s: float = 2.0, alpha: float = 0.5, color="C0", **kwargs):
    """Scatter plot of ``(n, 2)`` samples (tensor or array), equal aspect; ``bounds`` fixes the limits."""
    pts = _np(samples)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"samples must have shape (n, 2), got {pts.shape}")
    fig, ax = _axes(ax)
    ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=alpha, color=color, linewidths=0, **kwargs)
    if bounds is not None:
        ax.set_xlim(*bounds[0])
        ax.set_ylim(*bounds[1])
    ax.set_aspect("equal")
    return fig, ax


def _grid_lines(bounds, n_lines, points_per_line, dtype, device):
    """``2 n_lines`` polylines (horizontal then vertical) as one ``(2 n_lines * P, 2)`` tensor."""
    (x0, x1), (y0, y1) = bounds
    t = torch.linspace(0, 1, points_per_line, dtype=dtype, device=device)
    lines = []
    for c in torch.linspace(0, 1, n_lines, dtype=dtype, device=device):
        lines.append(torch.stack([x0 + (x1 - x0) * t, (y0 + (y1 - y0) * c).expand_as(t)], 1))
    for c in torch.linspace(0, 1, n_lines, dtype=dtype, device=device):
        lines.append(torch.stack([(x0 + (x1 - x0) * c).expand_as(t), y0 + (y1 - y0) * t], 1))
    return torch.cat(lines)


def _stages(flow, points, direction, bounds, n_lines, points_per_line):
    """Per-stage points and grid lines: lists of numpy arrays ``(n, 2)`` and ``(2 n_lines, P, 2)``."""
    check_tensor(points, name="points", event_shape=(2,))
    if bounds is None:
        lo, hi = points.min(0).values, points.max(0).values
        bounds = ((float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1])))
    lines = _grid_lines(bounds, n_lines, points_per_line, points.dtype, points.device)
    hs = flow.intermediates(points, direction)
    gs = flow.intermediates(lines, direction)
    pts = [_np(h) for h in hs]
    grids = [_np(g).reshape(2 * n_lines, points_per_line, 2) for g in gs]
    layers = list(flow.transform) if isinstance(flow.transform, Compose) else [flow.transform]
    names = [type(t).__name__ for t in (layers if direction == "forward" else layers[::-1])]
    return pts, grids, names


def _draw_stage(ax, pts, grid, title, s, bounds=None, fontsize=9):
    for line in grid:
        ax.plot(line[:, 0], line[:, 1], color="0.6", lw=0.6)
    ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=0.5, color="C0", linewidths=0)
    ax.set_title(title, fontsize=fontsize)
    ax.set_aspect("equal")
    if bounds is not None:
        ax.set_xlim(*bounds[0])
        ax.set_ylim(*bounds[1])


def plot_flow_layers(
    flow,
    points,
    direction: str = "inverse",
    bounds=None,
    n_lines: int = 11,
    points_per_line: int = 100,
    max_cols: int = 5,
    s: float = 2.0,
):
    """One panel per stage of a 2-D flow: how it moves ``points`` and a grid of lines.

    ``direction="inverse"`` (generation) starts from base-space ``points`` (e.g. ``flow.base.sample(n)``);
    ``"forward"`` (normalization) from data. The grid covers ``bounds`` (default: the points' bounding
    box) in the starting space; every panel shows ``Flow.intermediates`` after one more layer.
    Returns ``(fig, axes)`` with ``axes`` a flat array.
    """
    pts, grids, names = _stages(flow, points, direction, bounds, n_lines, points_per_line)
    n = len(pts)
    ncols = min(check_int(max_cols, "max_cols"), n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows), squeeze=False)
    axes = axes.ravel()
    titles = ["input" if direction == "forward" else "base samples"] + [
        f"{i + 1}: {nm}" for i, nm in enumerate(names)
    ]
    for ax, p, g, title in zip(axes, pts, grids, titles):
        _draw_stage(ax, p, g, title, s)
    for ax in axes[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig, axes


def stage_log_prob(flow, k: int, direction: str = "inverse"):
    """The log-density of the model's variable after ``k`` layers of ``direction``, as a function of a
    ``(B, 2)`` tensor: the flow made of the layers still to come, on the same base.

    ``direction="inverse"`` (generation) starts at the base (``k = 0``: ``log p_Z``) and ends at the model's
    ``log p_X`` (``k = K``); ``"forward"`` runs the other way. Used by :func:`animate_flow`.
    """
    layers = list(flow.transform) if isinstance(flow.transform, Compose) else [flow.transform]
    K = len(layers)
    if direction not in ("forward", "inverse"):
        raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")
    if not 0 <= int(k) <= K:
        raise ValueError(f"k must be between 0 and the number of layers {K}, got {k}")
    rest = layers[K - k :] if direction == "inverse" else layers[k:]
    if not rest:
        return flow.base.log_prob
    sub = Compose(*rest)

    def log_prob(x):
        z, logdet = sub._forward(x)
        return flow.base.log_prob(z) + logdet

    return log_prob


def _density_on_grid(log_prob, bounds, grid, dtype, device):
    (x0, x1), (y0, y1) = bounds
    xs = torch.linspace(x0, x1, grid, dtype=dtype, device=device)
    ys = torch.linspace(y0, y1, grid, dtype=dtype, device=device)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    points = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
    with torch.no_grad():
        log_p = torch.cat([log_prob(chunk) for chunk in points.split(16384)])
    return _np(log_p.exp().reshape(grid, grid))


def animate_flow(
    flow,
    points=None,
    direction: str = "inverse",
    frames: int = 8,
    n_samples: int = 1000,
    seed: int = 0,
    bounds=None,
    n_lines: int = 11,
    interval: int = 80,
    s: float = 2.0,
    density: bool = False,
    grid: int = 80,
    stage_label: str = "layer",
):
    """Animate a 2-D flow layer by layer: ``frames`` frames linearly interpolate each layer's move.

    Frame ``f`` of transition ``k`` shows ``(1 - a) h_k + a h_{k+1}``, ``a = f / frames``. Without
    ``points``, draws ``n_samples`` base samples with ``seed`` (generation). Axis limits are fixed
    (``bounds``, default the central 99% of all stages) so motion is comparable; both axes are labelled.
    With ``density=True`` a second panel shows the density of the variable after each layer
    (:func:`stage_log_prob`, a ``grid x grid`` heat map on ``bounds``); frames between two layers blend the two
    layers' densities (the samples move linearly, which no layer does exactly), so only the frames at a layer
    show an exact density: use ``frames=1`` with many layers (e.g. time slices of a CNF) for an exact film.
    ``stage_label`` names a layer in the titles ("layer", "time slice", ...). Returns a ``FuncAnimation``;
    show it in the book with ``to_html(anim)``. The figure is closed so that notebooks do not also print a
    static copy.
    """
    frames = check_int(frames, "frames")
    grid = check_int(grid, "grid", minimum=2)
    if points is None:
        if direction != "inverse":
            raise ValueError("direction='forward' needs data points")
        dtype, device = _like(flow)
        gen = torch.Generator(device=device).manual_seed(int(seed))
        with torch.no_grad():
            points = flow.base.sample(check_int(n_samples, "n_samples"), generator=gen)
    pts, grids, names = _stages(flow, points, direction, None, n_lines, 50)
    if bounds is None:
        allp = np.concatenate(pts)
        allp = allp[np.isfinite(allp).all(1)]
        lo, hi = np.percentile(allp, 0.5, axis=0), np.percentile(allp, 99.5, axis=0)
        pad = 0.1 * (hi - lo)
        bounds = ((lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1]))
    densities = None
    if density:
        dtype, device = _like(flow)
        densities = [_density_on_grid(stage_log_prob(flow, k, direction), bounds, grid, dtype, device)
                     for k in range(len(pts))]
        vmax = max(float(np.nanpercentile(d, 99.5)) for d in densities)
        fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(COLUMN_WIDTH, 3.6))
    else:
        fig, ax = plt.subplots(figsize=(4, 4))
    n_total = (len(pts) - 1) * frames + 1
    start = "base samples" if direction == "inverse" else "input"

    def update(f):
        k, a = min(f // frames, len(pts) - 2), (f - min(f // frames, len(pts) - 2) * frames) / frames
        if len(pts) == 1:
            k, a = 0, 0.0
        if a == 1.0:
            k, a = k + 1, 0.0
        p = pts[k] if a == 0 else (1 - a) * pts[k] + a * pts[k + 1]
        g = grids[k] if a == 0 else (1 - a) * grids[k] + a * grids[k + 1]
        ax.clear()
        if a > 0:
            title = f"{stage_label} {k + 1}/{len(names)}: {names[k]}"
        else:
            title = start if k == 0 else f"after {stage_label} {k}/{len(names)}"
        _draw_stage(ax, p, g, title, s, bounds, fontsize=11 if density else 9)
        ax.set_xlabel("$h_1$" if density else "$x_1$")
        ax.set_ylabel("$h_2$" if density else "$x_2$")
        if densities is not None:
            d = densities[k] if a == 0 else (1 - a) * densities[k] + a * densities[k + 1]
            ax_d.clear()
            (x0, x1), (y0, y1) = bounds
            ax_d.imshow(d, origin="lower", extent=(x0, x1, y0, y1), cmap="viridis", vmin=0, vmax=vmax,
                        interpolation="nearest", aspect="equal")
            if a > 0:
                what = f"density: blend of {k} and {k + 1}"
            else:
                what = "density of the base" if k == 0 and direction == "inverse" else f"density after {k}"
            ax_d.set_title(what, fontsize=11)
            ax_d.set_xlabel("$h_1$")
            ax_d.set_ylabel("$h_2$")
        return ()

    update(0)
    fig.tight_layout()
    anim = FuncAnimation(fig, update, frames=n_total, interval=interval, blit=False)
    plt.close(fig)
    return anim


def _svg(body: str, label: str) -> str:
    return (f'<svg width="14" height="14" viewBox="0 0 16 16" role="img" aria-label="{label}" '
            f'style="vertical-align:middle" fill="currentColor">{body}</svg>')


# The player's Font Awesome icons as inline SVG: they draw without any font (Unicode media symbols such as
# U+23EE are missing from many system fonts and showed as empty boxes).
_TRI_R, _TRI_L = '<path d="M4 2 L13 8 L4 14 Z"/>', '<path d="M12 2 L3 8 L12 14 Z"/>'
_ICONS = {
    "fa fa-minus": _svg('<rect x="2" y="7" width="12" height="2"/>', "slower"),
    "fa fa-plus": _svg('<rect x="2" y="7" width="12" height="2"/><rect x="7" y="2" width="2" height="12"/>',
                       "faster"),
    "fa fa-fast-backward": _svg('<rect x="2" y="2" width="2" height="12"/><path d="M14 2 L5 8 L14 14 Z"/>',
                                "first frame"),
    "fa fa-step-backward": _svg('<rect x="11" y="2" width="2" height="12"/><path d="M10 2 L2 8 L10 14 Z"/>',
                                "previous frame"),
    "fa fa-play fa-flip-horizontal": _svg(_TRI_L, "play backwards"),
    "fa fa-pause": _svg('<rect x="3" y="2" width="3.5" height="12"/><rect x="9.5" y="2" width="3.5" height="12"/>',
                        "pause"),
    "fa fa-play": _svg(_TRI_R, "play"),
    "fa fa-step-forward": _svg('<rect x="3" y="2" width="2" height="12"/><path d="M6 2 L14 8 L6 14 Z"/>',
                               "next frame"),
    "fa fa-fast-forward": _svg('<rect x="12" y="2" width="2" height="12"/><path d="M2 2 L11 8 L2 14 Z"/>',
                               "last frame"),
}


def offline_player(html: str) -> str:
    """Make matplotlib's JavaScript player self-contained and accessible: it links Font Awesome from a CDN for
    its button icons (dropped: the icons become inline SVG drawings, which need no font) and its frame has no alt
    text (added)."""
    import re

    html = re.sub(r"<link[^>]*font-awesome[^>]*>", "", html)
    html = html.replace('<img id="', '<img alt="animation frame (play it with the buttons below)" id="')
    dot = _svg('<circle cx="8" cy="8" r="3"/>', "button")
    return re.sub(r'<i class="(fa [^"]*)"></i>', lambda m: _ICONS.get(m.group(1), dot), html)


def to_html(anim) -> str:
    """Self-contained HTML/JavaScript player for an animation: frames embedded, no CDN (the player's icons
    are inline SVG), plays offline."""
    return offline_player(anim.to_jshtml())


def image_grid(images, nrow: int = 8, ax=None, padding: int = 1, cmap: str = "gray", vmin=None, vmax=None):
    """Tile images ``(B, C, H, W)`` (C = 1 or 3) or ``(B, H, W)`` into one picture, ``nrow`` images per row.

    Values are shown as they are (``vmin``/``vmax`` fix the grey scale; RGB is clipped to [0, 1]).
    Returns ``(fig, ax)``.
    """
    x = _np(images).astype(np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (B, C, H, W) with C in (1, 3), or (B, H, W); got {x.shape}")
    nrow = check_int(nrow, "nrow")
    B, C, H, W = x.shape
    ncol_imgs, nrows = min(nrow, B), math.ceil(B / nrow)
    canvas = np.full(
        (C, nrows * (H + padding) + padding, ncol_imgs * (W + padding) + padding), np.nan, np.float32
    )
    for b in range(B):
        r, c = divmod(b, nrow)
        top, left = padding + r * (H + padding), padding + c * (W + padding)
        canvas[:, top : top + H, left : left + W] = x[b]
    # 0.6 in per image, but never wider than the book's text column (a wider figure is shrunk on the page)
    size = min(0.6, (COLUMN_WIDTH - 0.5) / ncol_imgs)
    fig, ax = _axes(ax, figsize=(size * ncol_imgs + 0.5, size * nrows + 0.5))
    if C == 1:
        ax.imshow(canvas[0], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    else:
        ax.imshow(np.nan_to_num(canvas.transpose(1, 2, 0), nan=1.0).clip(0, 1), interpolation="nearest")
    ax.axis("off")
    return fig, ax


def markdown_table(header, rows, align=None):
    """A table for a notebook's output that the book renders as an HTML table (it reflows on a narrow screen,
    unlike columns of printed text): ``header`` a list of column names, ``rows`` lists of cells (numbers are
    shown with ``str``: format them first), ``align`` a string of ``l``/``r``/``c`` per column (default: text
    left, the rest right). ``|`` in a cell is escaped. Returns an ``IPython.display.Markdown`` object."""
    from IPython.display import Markdown

    header = [str(h) for h in header]
    rows = [[str(c) for c in row] for row in rows]
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row needs {len(header)} cells, one per column of the header")
    if align is None:
        align = "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or set(align) - set("lrc"):
        raise ValueError(f"align must be {len(header)} letters l, r or c, got {align!r}")
    rule = {"l": ":---", "r": "---:", "c": ":---:"}

    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return Markdown("\n".join([line(header), "| " + " | ".join(rule[a] for a in align) + " |"]
                             + [line(r) for r in rows]))


# ------------------------------------------------------------------------------------------- diagrams


def _box(ax, x, y, w, h, text, color, fontsize=10):
    """A rounded box centred at ``(x, y)`` with centred text (the diagrams' building block)."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor="0.2", lw=1.0))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, linespacing=1.25)


def _arrow(ax, start, end, text=None, fontsize=10, offset=(0.0, 0.13), ha="center"):
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color="0.2", lw=1.2,
                                                          shrinkA=0, shrinkB=0))
    if text:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text, ha=ha,
                va="bottom", fontsize=fontsize)


def _shape(c, h, w):
    return rf"${c}\!\times\!{h}\!\times\!{w}$"


def glow_step_diagram(shape=(4, 4, 4), ax=None):
    """Diagram of one Glow step on an input of shape ``(c, h, w)`` (``c`` even): ActNorm, invertible 1x1
    convolution, affine coupling with a channel mask, each with what it computes and its log-det; the shapes
    on the arrows. Returns ``(fig, ax)``."""
    c, h, w = as_shape = tuple(int(s) for s in shape)
    if len(as_shape) != 3 or min(as_shape) < 1 or c % 2:
        raise ValueError(f"shape must be (c, h, w) of positive ints with an even c, got {shape!r}")
    fig, ax = _axes(ax, figsize=(COLUMN_WIDTH, 3.3))
    ax.set(xlim=(0, 10), ylim=(-0.35, 4.1))
    ax.axis("off")
    xs, bw, bh, y = (1.85, 5.0, 8.15), 2.6, 2.0, 2.35
    texts = [
        "ActNorm\n\n" + r"$\mathbf{s} \odot \mathbf{h} + \mathbf{b}$" + "\nper channel",
        r"$1\!\times\!1$ convolution" + "\n\n" + r"$\mathbf{W}\mathbf{h}_{ij}$ per pixel"
        + f"\n$\\mathbf{{W}}$: ${c}\\times{c}$",
        "affine coupling\n\n" + r"$\mathbf{z}_a = \mathbf{h}_a$" + "\n"
        + r"$\mathbf{z}_b = \mathbf{h}_b \odot e^{\mathbf{s}} + \mathbf{t}$" + "\n"
        + r"$(\mathbf{s}, \mathbf{t}) = \mathrm{NN}(\mathbf{h}_a)$",
    ]
    logdets = [rf"${h * w}\,\Sigma_k \log|s_k|$", rf"${h * w} \log|\det \mathbf{{W}}|$", r"$\Sigma_i\, s_i$"]
    colors = (PALETTE[5], PALETTE[1], PALETTE[2])
    for x, text, ld, col in zip(xs, texts, logdets, colors):
        _box(ax, x, y, bw, bh, text, (*plt.matplotlib.colors.to_rgb(col), 0.25), fontsize=10)
        ax.text(x, y - bh / 2 - 0.15, "log-det: " + ld, ha="center", va="top", fontsize=10)
    for a, b in zip(xs, xs[1:]):
        _arrow(ax, (a + bw / 2, y), (b - bw / 2, y))
    ax.text(xs[0], y + bh / 2 + 0.12, "in: " + _shape(c, h, w), ha="center", va="bottom", fontsize=10)
    ax.text(xs[-1], y + bh / 2 + 0.12, "out: " + _shape(c, h, w), ha="center", va="bottom", fontsize=10)
    ax.text(xs[-1], y - bh / 2 - 0.75, rf"$\mathbf{{h}}_a, \mathbf{{h}}_b$: ${c // 2}\times{h}\times{w}$ each",
            ha="center", va="top", fontsize=10)
    ax.text(xs[1], y + bh / 2 + 0.12, "shape kept", ha="center", va="bottom", fontsize=10)
    return fig, ax


def multiscale_diagram(image_shape=(1, 8, 8), num_levels: int = 3, steps_per_level: int = 4, ax=None):
    """Diagram of the multi-scale architecture (RealNVP, Glow): for each level, squeeze, ``steps_per_level``
    flow steps, and (except at the last level) factor out half of the channels as ``z_k``; shapes from
    ``MultiScale.level_shapes``. Returns ``(fig, ax)``."""
    from flowlib.transforms.multiscale import MultiScale

    K = check_int(steps_per_level, "steps_per_level")
    shapes = MultiScale.level_shapes(image_shape, check_int(num_levels, "num_levels"))
    n = len(shapes)
    fig, ax = _axes(ax, figsize=(COLUMN_WIDTH, 0.95 * n + 0.4))
    ax.set(xlim=(0, 10), ylim=(-0.55, 1.25 * n - 0.1))
    ax.axis("off")
    xs, bw, bh = (2.25, 5.05, 7.2), (1.3, 1.7, 1.0), 0.62
    c0, h0, w0 = (int(s) for s in image_shape)
    prev = _shape(c0, h0, w0)
    for k, (c, h, w) in enumerate(shapes):
        y = 1.25 * (n - k) - 0.6
        last = k == n - 1
        ax.text(0.0, y + 0.08, ("$\\mathbf{x}$: " if k == 0 else "$\\mathbf{h}'$: ") + prev, ha="left",
                va="bottom", fontsize=10)
        _arrow(ax, (0.0, y), (xs[0] - bw[0] / 2, y))
        _box(ax, xs[0], y, bw[0], bh, "squeeze", (*plt.matplotlib.colors.to_rgb(PALETTE[5]), 0.25))
        _arrow(ax, (xs[0] + bw[0] / 2, y), (xs[1] - bw[1] / 2, y), _shape(c, h, w), offset=(0, 0.06))
        _box(ax, xs[1], y, bw[1], bh, f"{K} flow steps", (*plt.matplotlib.colors.to_rgb(PALETTE[2]), 0.25))
        if last:
            _arrow(ax, (xs[1] + bw[1] / 2, y), (8.5, y))
            ax.text(8.6, y, rf"$\mathbf{{z}}_{k}$: " + _shape(c, h, w), ha="left", va="center", fontsize=10)
            continue
        _box(ax, xs[2], y, bw[2], bh, "split", (*plt.matplotlib.colors.to_rgb(PALETTE[1]), 0.25))
        _arrow(ax, (xs[1] + bw[1] / 2, y), (xs[2] - bw[2] / 2, y))
        _arrow(ax, (xs[2] + bw[2] / 2, y), (8.5, y))
        ax.text(8.6, y, rf"$\mathbf{{z}}_{k}$: " + _shape(c // 2, h, w), ha="left", va="center", fontsize=10)
        # the kept half goes down to the next level's input
        y_next = y - 1.25
        ax.plot([xs[2], xs[2]], [y - bh / 2, y - 0.62], color="0.2", lw=1.2)
        ax.plot([xs[2], 0.6], [y - 0.62, y - 0.62], color="0.2", lw=1.2)
        _arrow(ax, (0.6, y - 0.62), (0.6, y_next + 0.36))
        prev = _shape(c // 2, h, w)
    total = sum(c * h * w // (1 if k == n - 1 else 2) for k, (c, h, w) in enumerate(shapes))
    ax.text(10.0, -0.5, rf"$\mathbf{{z}} = (\mathbf{{z}}_0, \dots, \mathbf{{z}}_{n - 1})$: {total} numbers",
            ha="right", va="bottom", fontsize=10)
    return fig, ax
