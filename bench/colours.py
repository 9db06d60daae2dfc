"""Each solver's fixed colour, marker and line style in every figure and table, whichever solvers a run holds.

Solvers of one family share a hue and differ in lightness and marker; families differ in hue. The colours were
chosen so that any two solvers of different families differ by CIEDE2000 >= 19 and two of one family by >= 11,
with lightness between 32 and 78 (visible on white); tests/test_report_compare.py holds them to a bar.
`lib.name` (another library's implementation of `name`, e.g. diffusers.dpmpp_2m) is drawn like `name`, hollow and
dashed. An unknown name gets a grey, chosen by a stable hash of the name, from a palette far from every family.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

# family -> its solvers, in the order of their colours and markers; never re-ordered (a solver keeps its style).
FAMILIES = {
    "DDIM / first order": ("ddim", "dpm_solver_1", "euler", "euler_ancestral"),
    "DPM-Solver singlestep": ("dpm_solver_2", "dpm_solver_3"),
    "DPM-Solver multistep": ("dpm_solver_2m", "dpm_solver_3m"),
    "DPM-Solver++": ("dpmpp_2s", "dpmpp_2m", "dpmpp_3m"),
    "UniPC": ("unipc",),
    "linear multistep": ("ipndm", "deis"),
    "classical Runge-Kutta": ("heun", "rk45"),
    "adaptive": ("dpm_solver_adaptive",),
    "score_sde SDE": ("euler_maruyama", "reverse_diffusion", "pc"),
    "modern SDE": ("edm_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "restart"),
}
# family -> colours of its members: one hue (CIELAB hue angle in the comment) at lightness steps.
FAMILY_COLOURS = {
    "DDIM / first order": ("#b20b3d", "#e68b92", "#de415d", "#713c40"),  # crimson, 18°
    "DPM-Solver singlestep": ("#a83d0a", "#a36f59"),  # rust, 49°
    "DPM-Solver multistep": ("#c08c1e", "#f7b20e"),  # gold, 80°
    "DPM-Solver++": ("#646c30", "#909a51", "#bfc688"),  # olive, 112°
    "UniPC": ("#1dd656",),  # green, 144°
    "linear multistep": ("#025642", "#3e9a7e"),  # teal, 169°
    "classical Runge-Kutta": ("#0e798b", "#69cfe5"),  # cyan, 220°
    "adaptive": ("#349ded",),  # sky blue, 267°
    "score_sde SDE": ("#9c388f", "#bb65ad", "#ec83db"),  # magenta, 332°
    "modern SDE": ("#43458d", "#7172d9", "#9a95eb", "#c2bceb"),  # violet, 297°
}
MARKERS = ("o", "s", "^", "D")  # by position in the family
UNKNOWN_COLOURS = ("#4c4c4c", "#787878", "#a3a3a3")  # neutral greys: no family has a grey
UNKNOWN_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "p")
KNOWN = tuple(s for members in FAMILIES.values() for s in members)  # every named solver, family by family


@dataclass(frozen=True)
class Style:
    colour: str  # "#rrggbb"
    marker: str  # a matplotlib marker
    linestyle: str  # a matplotlib line style
    hollow: bool = False  # draw markers unfilled (markerfacecolor="none"): another library's implementation


_STYLES = {s: Style(FAMILY_COLOURS[f][i], MARKERS[i], "-") for f, members in FAMILIES.items()
           for i, s in enumerate(members)}


def solver_family(name: str) -> str | None:
    """The family of a solver name (of the algorithm after a `lib.` prefix), or None for an unknown name."""
    algorithm = name.split(".", 1)[-1]
    return next((f for f, members in FAMILIES.items() if algorithm in members), None)


def solver_style(name: str) -> Style:
    """The solver's fixed style: its family's colour and marker; `lib.name` hollow and dashed; unknown names a grey
    and a marker chosen by a stable hash of the name."""
    if not isinstance(name, str) or not name.strip(".").strip():
        raise ValueError(f"a solver name must be a non-empty string, got {name!r}")
    library, _, algorithm = name.rpartition(".")
    own = _STYLES.get(algorithm)
    if own is None:
        h = int(hashlib.sha256(algorithm.encode()).hexdigest(), 16)
        own = Style(UNKNOWN_COLOURS[h % len(UNKNOWN_COLOURS)],
                    UNKNOWN_MARKERS[(h // len(UNKNOWN_COLOURS)) % len(UNKNOWN_MARKERS)], "-")
    return Style(own.colour, own.marker, "--", True) if library else own


def solver_colour(name: str) -> str:
    """The solver's fixed colour ("#rrggbb")."""
    return solver_style(name).colour


def legend_png(path, names=None) -> Path:
    """A PNG of every family's styles (and of `names`, e.g. other libraries' or unknown ones): a check by eye."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(names or [*KNOWN, "diffusers.dpmpp_2m", "diffusers.ddim", "my_solver", "other_solver"])
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(names) + 0.6))
    for i, name in enumerate(names):
        st = solver_style(name)
        y = len(names) - i
        ax.plot([0, 1, 2, 3], [y] * 4, color=st.colour, linestyle=st.linestyle, marker=st.marker, markersize=7,
                linewidth=2, markerfacecolor="none" if st.hollow else st.colour, markeredgewidth=1.6)
        ax.text(3.3, y, f"{name}  ({solver_family(name) or 'unknown'})  {st.colour}", va="center", fontsize=9)
    ax.set_xlim(-0.3, 8.5)
    ax.set_ylim(0.3, len(names) + 0.7)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
