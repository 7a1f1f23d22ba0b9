"""Published numbers beside the presets: the one table of figures read from public sources.

Why one table: the README's "Reproducing published results" tables (`markdown_tables`, printed by
``python -m acol.published``), ``python -m acol.presets NAME --describe`` and the report's published-number
comparison all read `NUMBERS`, so no figure is typed twice. Each entry keeps the figure exactly as its source
printed it (`Published.printed`, a `Decimal`: never rounded) and, where the notes give it, the same figure in
this project's metric (`Published.value`: the papers print localization ACCURACY, this project reports
localization ERROR = 100 - accuracy). A figure the notes mark "do not cite", or do not give, is an entry with
status "not confirmed" and no number. Source of every figure: the project notes ``shared/notes/published.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

__all__ = [
    "CHOE_ACOL",
    "CHOE_COLUMNS",
    "CHOE_GRID",
    "CHOE_METHODS",
    "NUMBERS",
    "NOT_CONFIRMED",
    "Published",
    "PresetMatch",
    "for_preset",
    "choe_value",
    "in_metric",
    "markdown_tables",
]

NOT_CONFIRMED = "not confirmed"
DATASETS = {"ilsvrc": "ILSVRC", "cub": "CUB", "openimages": "OpenImages", "": "dataset not named"}
BACKBONES = {
    "vgg16": "VGG16",
    "inception_v3": "Inception-v3",
    "resnet50": "ResNet-50",
    "googlenet": "GoogLeNet",
}


@dataclass(frozen=True)
class Published:
    """One published figure (or one that could not be confirmed), with where it was read and its status."""

    row: str  # what the figure is of, e.g. "VGG16 ACoL, ILSVRC"
    method: str  # this project's method name where it has one (acol, cam, has, ...), else the source's
    metric: str  # this project's metric the figure is comparable with (maxboxacc_v2, top1_loc_error, ...)
    printed: Decimal | None  # exactly as the source printed it; None: not confirmed
    measure: str  # what the source printed: "top-1 loc accuracy", "MaxBoxAccV2, difference to CAM", ...
    value: Decimal | None  # the figure in `metric`'s terms, as the notes give it; None where they give none
    paper: str  # whose figure
    source: str  # a link to the source ("" where the notes give none)
    where: str  # the exact place in the source
    status: str  # primary, secondary, ..., or "not confirmed"
    preset: str | None = None  # the acol.presets preset whose published row this is
    note: str = ""

    def as_printed(self) -> str:
        """The figure as printed, with what it is: ``"top-1 loc accuracy 45.83"``."""
        return (
            NOT_CONFIRMED if self.printed is None else f"{self.measure} {_text(self.printed, self.measure)}"
        )


@dataclass(frozen=True)
class PresetMatch:
    """A run's method whose params match a preset on what identifies it (`acol.presets.match_presets`)."""

    method: str  # the run's method (acol, cam)
    preset: str  # the preset it matches
    differs: tuple[str, ...] = ()  # recipe keys the run sets otherwise, as "key run (preset value)"


def _text(number: Decimal, measure: str) -> str:
    """A difference keeps its sign as printed (``+0.0``); any other figure its digits (``42.80``)."""
    return format(number, "+") if "difference" in measure else str(number)


# ------------------------------------------------------------------- Choe et al., CVPR 2020 (primary)

_CHOE_PAPER = "Choe et al., CVPR 2020 (Evaluating WSOL Right)"
_CHOE_URL = "https://github.com/clovaai/wsolevaluation"
_CHOE_WHERE = 'README "5. Library of WSOL methods", main_table.png (commit 9561173)'
_CHOE_CAPTION = "test split, hyperparameters tuned on train-fullsup, last checkpoint"
# The columns of their main table, as this project names dataset and backbone (VGG, Inception, ResNet).
CHOE_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (d, b) for d in ("ilsvrc", "cub", "openimages") for b in ("vgg16", "inception_v3", "resnet50")
)
# The table as printed: CAM as values, every other method as its difference to CAM; two baselines as values.
CHOE_GRID: dict[str, tuple[str, ...]] = {
    "CAM": ("60.0", "63.4", "63.7", "63.7", "56.7", "63.0", "58.3", "63.2", "58.5"),
    "HaS": ("+0.6", "+0.3", "-0.3", "+0.0", "-3.3", "+1.7", "-0.2", "-5.1", "-2.6"),
    "ACoL": ("-2.6", "+0.3", "-1.4", "-6.3", "-0.5", "+3.5", "-4.0", "-6.0", "-1.2"),
    "SPG": ("-0.1", "-0.1", "-0.4", "-7.4", "-0.8", "-2.6", "+0.0", "-0.9", "-1.8"),
    "ADL": ("-0.2", "-2.0", "+0.0", "+2.6", "+2.1", "-4.6", "+0.4", "-6.4", "-3.3"),
    "CutMix": ("-0.6", "+0.5", "-0.4", "-1.4", "+0.8", "-0.2", "-0.2", "-0.7", "-0.8"),
    "FSL baseline": ("60.3", "65.3", "66.3", "71.6", "86.6", "82.4", "65.9", "74.1", "74.4"),
    "Center baseline": ("52.5", "52.5", "52.5", "59.7", "59.7", "59.7", "45.8", "45.8", "45.8"),
}
_CHOE_VALUES = ("CAM", "FSL baseline", "Center baseline")  # printed as values, not differences
# ACoL = CAM + difference, as the notes give it ("So ACoL: ..."); tests check the sums.
CHOE_ACOL: tuple[str, ...] = ("57.4", "63.7", "62.3", "57.4", "56.2", "66.5", "54.3", "57.2", "57.3")


# Their method names as this project's `model.method` / `methods` spell them (the baselines are no method here).
CHOE_METHODS: dict[str, str] = {
    "CAM": "cam",
    "HaS": "has",
    "ACoL": "acol",
    "SPG": "spg",
    "ADL": "adl",
    "CutMix": "cutmix",
}


def choe_value(method: str, column: int) -> Decimal:
    """A method's figure in one column: printed as a value (CAM, baselines), else CAM + its printed difference
    (the caption's rule; exact, in `Decimal`). ACoL's sums are the notes' own (`CHOE_ACOL`; a test checks)."""
    printed = Decimal(CHOE_GRID[method][column])
    return printed if method in _CHOE_VALUES else Decimal(CHOE_GRID["CAM"][column]) + printed


def _choe(method: str, column: int) -> Published:
    dataset, backbone = CHOE_COLUMNS[column]
    metric = "pxap" if dataset == "openimages" else "maxboxacc_v2"
    label = "PxAP" if metric == "pxap" else "MaxBoxAccV2"
    printed = Decimal(CHOE_GRID[method][column])
    value = Decimal(CHOE_ACOL[column]) if method == "ACoL" else choe_value(method, column)
    ours = CHOE_METHODS.get(method)
    preset = f"choe-{backbone}-{ours}-{dataset}" if ours else None
    return Published(
        row=f"{BACKBONES[backbone]} {method}, {DATASETS[dataset]}",
        method=ours or method,
        metric=metric,
        printed=printed,
        measure=label if method in _CHOE_VALUES else f"{label}, difference to CAM",
        value=value,
        paper=_CHOE_PAPER,
        source=_CHOE_URL,
        where=_CHOE_WHERE,
        status="primary",
        preset=preset,
        note=_CHOE_CAPTION if method in _CHOE_VALUES else f"{_CHOE_CAPTION}; value = CAM + difference",
    )


# ------------------------------------------------------------------- the ACoL paper (Zhang et al., CVPR 2018)

_ACOL_PAPER = "Zhang et al., CVPR 2018 (ACoL)"
_PSOL = "https://github.com/tzzcl/PSOL"
_THREE = (
    'PSOL (CVPR 2020) poster table "WSOL Benchmark Results"; the same figures in SPOL (CVPR 2021, '
    "weijun88/SPOL resource/performance.png) and BAS (CVPR 2022, wpy1999/BAS Img/accuracy.png)"
)
_DPN = (
    "VGG16-ACoL boxes + a DPN-ensemble classifier, not this preset's own classifier: PSOL Table 4 prints "
    '"VGG16-ACoL+DPN-ensemble"; the ACoL author (xiaomengyc/ACoL issue 5): "We use better classification '
    'results from some advanced networks, such as ResNet, DPN, etc."'
)
_DPN_SHORT = "VGG16-ACoL boxes + a DPN-ensemble classifier (see the abstract's row)"
_UNREADABLE = "the ACoL paper's own tables were not readable; never filled in"
_BENCHMARKS = 'a public papers-and-benchmarks page, benchmark "weakly-supervised-object-localization-on-1"'
_AS_PRINTED = "as printed"  # the printed figure is already in this project's metric


def _acol(
    row: str,
    metric: str,
    printed: str | None,
    measure: str,
    value: str | None,
    *,
    method: str = "acol",
    source: str = _PSOL,
    where: str = _THREE,
    status: str = "secondary, three papers agree",
    preset: str | None = None,
    note: str = "",
) -> Published:
    """An ACoL-paper entry (by default one that PSOL, SPOL and BAS print alike)."""
    number = None if printed is None else Decimal(printed)
    comparable = number if value == _AS_PRINTED else None if value is None else Decimal(value)
    return Published(
        row, method, metric, number, measure, comparable, _ACOL_PAPER, source, where, status, preset, note
    )


_ILSVRC_OWN = "VGG16 ACoL, ILSVRC val, own classifier"
_CUB_TEST = "VGG16 ACoL, CUB test"
_VGG_ILSVRC = {"preset": "acol-paper-vgg16-ilsvrc"}
_VGG_CUB = {"preset": "acol-paper-vgg16-cub"}
_ACOL_ROWS: tuple[Published, ...] = (
    _acol("VGG16 ACoL, ILSVRC val (abstract)", "top1_loc_error", "45.14", "top-1 loc error", _AS_PRINTED,
          source="https://arxiv.org/abs/1804.06962", where="the paper's abstract (arXiv 1804.06962)",
          status="primary", note=_DPN, **_VGG_ILSVRC),
    _acol("VGG16 ACoL + DPN-ensemble classifier, ILSVRC val", "top1_loc_error", "54.86", "top-1 loc accuracy",
          None, where="PSOL (CVPR 2020) Table 4, tzzcl/PSOL poster.png", status="secondary + author's reply",
          note=_DPN_SHORT),
    _acol("VGG16 ACoL + DPN-ensemble classifier, ILSVRC val", "top5_loc_error", "61.45", "top-5 loc accuracy",
          None, where="PSOL (CVPR 2020) Table 4, tzzcl/PSOL poster.png", status="secondary + author's reply",
          note=_DPN_SHORT),
    _acol(_ILSVRC_OWN, "top1_loc_error", "45.83", "top-1 loc accuracy", "54.17", **_VGG_ILSVRC),
    _acol(_ILSVRC_OWN, "top5_loc_error", "59.43", "top-5 loc accuracy", "40.57", **_VGG_ILSVRC),
    _acol(_ILSVRC_OWN, "gt_known_loc", "62.96", "GT-known loc accuracy", _AS_PRINTED, **_VGG_ILSVRC),
    _acol(_CUB_TEST, "top1_loc_error", "45.92", "top-1 loc accuracy", "54.08", status="secondary",
          **_VGG_CUB),
    _acol(_CUB_TEST, "top5_loc_error", "56.51", "top-5 loc accuracy", "43.49", status="secondary",
          **_VGG_CUB),
    _acol(_CUB_TEST, "gt_known_loc", None, "GT-known loc accuracy", None, source="", where="",
          status=NOT_CONFIRMED, note="SPOL and BAS disagree with CPCL (TCSVT 2023): do not cite", **_VGG_CUB),
    _acol("GoogLeNet ACoL, dataset not named", "top5_loc_error", "42.58", "top-5 loc error", _AS_PRINTED,
          source="", where=_BENCHMARKS,
          status="secondary, dataset unconfirmed", note="not a preset's number: the dataset is not named"),
    *(
        _acol(f"GoogLeNet ACoL, {DATASETS[d]}", "top1_loc_error", None, "top-1 loc error", None, source="",
              where="", status=NOT_CONFIRMED, note=_UNREADABLE, preset=f"acol-paper-googlenet-{d}")
        for d in ("ilsvrc", "cub")
    ),
    *(
        _acol("VGG16 CAM, ILSVRC val (as printed beside ACoL)", m, p, f"{label} loc accuracy", v,
              method="cam", status="secondary")
        for m, p, label, v in (
            ("top1_loc_error", "42.80", "top-1", None),
            ("top5_loc_error", "54.86", "top-5", None),
            ("gt_known_loc", "59.00", "GT-known", _AS_PRINTED),
        )
    ),
)  # fmt: skip

NUMBERS: tuple[Published, ...] = (
    *_ACOL_ROWS,
    *(_choe(m, c) for m in CHOE_GRID for c in range(len(CHOE_COLUMNS))),
)


def for_preset(name: str) -> tuple[Published, ...]:
    """The entries of preset `name`, confirmed or not (empty: nothing published was read for it)."""
    return tuple(p for p in NUMBERS if p.preset == name)


def in_metric(p: Published) -> str:
    """The comparable figure in this project's metric, or why there is none."""
    if p.value is not None:
        return str(p.value)
    return NOT_CONFIRMED if p.printed is None else "—"


# ------------------------------------------------------------------- README tables


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _source(p: Published) -> str:
    where = f"[{p.where}]({p.source})" if p.source else p.where
    return f"{p.paper}: {where}" if where else p.paper


def _readme_row(p: Published) -> str:
    cells = (
        p.row,
        f"`{p.preset}`" if p.preset else "—",
        f"`{p.metric}`",
        in_metric(p),
        p.as_printed(),
        _source(p),
        p.status,
        p.note,
    )
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _choe_cell(method: str, column: int) -> str:
    printed = CHOE_GRID[method][column]
    return printed if method in _CHOE_VALUES else f"{printed} (= {choe_value(method, column)})"


def markdown_tables() -> str:
    """The README's tables: the ACoL paper's figures, then Choe et al.'s main table as printed (each cell of a
    method with its value; its preset is ``choe-<backbone>-<method>-<dataset>``)."""
    rows = [p for p in NUMBERS if not p.paper.startswith("Choe")]
    head = "| row | preset | metric | published (this metric) | as printed | source | status | note |"
    lines = [head, "| --- " * 8 + "|", *(_readme_row(p) for p in rows), ""]
    columns = [f"{DATASETS[d]} {BACKBONES[b]}" for d, b in CHOE_COLUMNS]
    lines += ["| method | " + " | ".join(columns) + " |", "| --- " * (len(columns) + 1) + "|"]
    lines += [
        f"| {m} | " + " | ".join(_choe_cell(m, c) for c in range(len(CHOE_COLUMNS))) + " |" for m in CHOE_GRID
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_tables(), end="")
