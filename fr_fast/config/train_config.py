"""Training configuration: one dataclass, YAML presets and ``key=value`` overrides (nanoGPT style).

A preset is a flat YAML mapping of :class:`TrainConfig` fields; it may name other presets with
``base: other.yaml`` or a list ``base: [dataset/cifar100.yaml, model/resnet18.yaml, method/trades.yaml]``
(resolved relative to the preset's folder; later entries override earlier ones, the preset's own values
override them all). ``configs/`` holds such profiles (``dataset/``, ``model/``, ``method/``) and
``configs/paper.yaml`` composes them into every row of the paper's tables (:mod:`fr_fast.config.paper`).
Command-line overrides come last: ``--lr=0.05``, ``lam=0.2``, ``--lr-milestones=[10,20]``,
``--eps=8/255``; a bare ``--flag`` sets a bool field to true, ``--no-flag`` to false. Values are parsed with
``yaml.safe_load`` and checked against the field's type: unknown or ill-typed fields raise a
``ValueError`` that names them.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml

from fr_fast.config.fields import (
    check_ranges,
    config_from_dict,
    field_types,
    knob,
    load_yaml,
    parse_overrides,
    unknown_field,
)
from fr_fast.runs.runfolder import run_dir
from fr_fast.utils.checks import check_choice

METHODS = ("natural", "at", "trades", "mart", "awp")
FR_MODES = ("none", "fr", "frwa")
AWP_BASES = ("at", "trades")
AMP_MODES = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
WA_ROLES = ("teacher", "evaluated", "both")
ATTACK_MODES = ("auto", "train", "eval")
LOW_PASS_PLACES = ("data", "model")
# BN mode of each objective's training attack in its reference code: PGD-AT (Madry; Rice et al.) attacks the
# model in train mode, TRADES and MART in eval mode. (The FR authors' code attacks in eval mode throughout.)
REFERENCE_ATTACK_MODES = {"natural": "train", "at": "train", "trades": "eval", "mart": "eval"}
# AWP defaults of Wu et al.'s code per base objective: (gamma, first epoch index with AWP, proxy lr; None = lr).
# TRADES-AWP: --awp-gamma 0.005, --awp-warmup 10 tested as `epoch >= 10` on 1-based epochs (AWP from the
# 10th epoch = index 9), proxy SGD at the initial lr. AT-AWP: gamma 0.01, no warm-up, proxy lr 0.01.
AWP_DEFAULTS = {"at": (0.01, 0, 0.01), "trades": (0.005, 9, None)}
# AT-AWP's SVHN script (train_svhn.py) warms up for 5 epochs (`epoch >= 5` on 0-based epochs); its CIFAR
# scripts for 0.
AWP_SVHN_WARMUP = {"at": 5}
# Fields that say where and how fast a run computes or reports, not what it computes: a resumed run may change
# them, and a paper row overridden in them keeps its label. paper_row: which published numbers eval shows.
RUN_CONTROL_FIELDS = frozenset({"out_dir", "resume", "progress", "device", "compile", "compile_mode",
                                "channels_last", "deterministic", "cpu_threads", "num_workers", "data_dir",
                                "tensorboard", "cuda_graph", "log_every", "paper_row", "branch_from",
                                "name"})
# build_model's arguments that the trainer derives itself (model_kwargs holds only architecture options).
MODEL_ARGUMENTS = frozenset({"name", "num_classes", "in_channels", "mean", "std", "low_pass_bandwidth"})
DEVICE_NAME = re.compile(r"^(auto|cpu|cuda|cuda:[0-9]+)$")
RUN_NAME = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]{0,99}$")
# Presets: the repository's configs/ (source checkout, editable install) or the copy shipped inside the
# package as fr_fast/configs (plain `pip install .`).
CONFIG_DIRS = tuple(d for d in (Path(__file__).resolve().parents[2] / "configs",  # source tree
                                Path(__file__).resolve().parents[1] / "configs") if d.is_dir())  # installed


@dataclass
class TrainConfig:
    """Every knob of :func:`fr_fast.training.train.train`; defaults are the published CIFAR-10 ResNet18 recipe
    (configs/dataset/cifar10.yaml): 2-D FR (the authors' code) with lam 0.1 when ``fr`` is on, training
    attacks in eval mode, float32, SGD 0.1 decayed at epochs 75 and 90 of 100.

    Epochs are 0-indexed: with ``lr_milestones=[75, 90]`` the learning rate is 0.01 from epoch index 75
    on (the 76th epoch), and ``fr_start_epoch=None`` / ``wa_start_epoch=None`` mean "the first milestone",
    i.e. FR and WA switch on together with the first learning-rate decay, as sec. 5 of the paper states.
    A run whose FR or average would never start under those defaults is rejected (set the field explicitly
    to mean it).

    ``fft``: "1d" is Eq. 2 as printed (per-example DFT over the C classes, batch mean); "2d" is the authors'
    code (one DFT over the B x C logit matrix, L1 averaged over its 2BC real and imaginary parts). For
    independent rows 1d/2d ~ 2C/sqrt(B) (1.7 at C=10, 18 at C=100, 35 at C=200 for B=128), for identical
    rows exactly 2C, so lam does not transfer between them; the 2-D form also depends on the batch size
    (under DDP the trainer computes it on the gathered global batch). The published numbers come from "2d"
    (the default); ``fr_fast.fr_loss`` / ``FRLoss`` keep "1d" as their default (the equation as printed).

    ``wa_role`` (with ``fr: frwa``, or ``wa: true``): "teacher" = the paper (A.3): the weight average is FR's
    teacher and the student is validated, selected and evaluated; "evaluated" = the authors' code: FR uses
    the model itself, and the BN-recalibrated average is validated, selected (best.pt) and evaluated;
    "both" = the average is the teacher and the evaluated model. Checkpoints hold student and average.
    The average is created from the weights at the end of epoch ``wa_start - 1`` (BN re-estimated at once)
    and updated after every later epoch: by default from the last epoch before the decay for teacher/both
    (the teacher exists when the lr drops) and from the first epoch at the decayed lr for evaluated (as the
    authors' code).
    """


    # objective
    method: str = knob("at", "training objective: natural | at | trades | mart | awp")
    awp_base: str = knob("at", "objective AWP perturbs the weights of: at | trades")
    fr: str = knob("none", "frequency regularization: none | fr (teacher = the model itself) | "
                   "frwa (with a weight average, see wa_role)")
    lam: float = knob(0.1, "FR coefficient lambda (paper: 0.1; 0.05 for Tiny ImageNet); its strength depends "
                      "on fft")
    distance: str = knob("l1", "FR distance between spectra: l1 | l2 | cosine")
    fft: str = knob("2d", "FR transform: 2d (the authors' code, which produced the published numbers: DFT over "
                    "the batch x class matrix) | 1d (Eq. 2 as printed: DFT over classes per example, ~2C/sqrt(B) "
                    "times stronger at the same lam)")
    fr_start_epoch: Union[int, None] = knob(None, "epoch index FR starts at; null = the first lr milestone "
                                            "(paper), 0 = from the start")
    wa: bool = knob(False, "keep a weight average even without fr=frwa (saved; evaluated if wa_role says so)")
    wa_role: str = knob("teacher", "what the weight average does: teacher (paper: FR's teacher, the student "
                        "is evaluated) | evaluated (authors' code: FR uses the model, the average is validated, "
                        "selected and saved) | both")
    wa_start_epoch: Union[int, None] = knob(None, "epoch index from which the weight average exists (built "
                                            "from the weights after the epoch before); null = the first lr "
                                            "milestone (+1 for wa_role evaluated, as the authors' code)")
    bn_recalibrate: bool = knob(True, "re-estimate the weight average's BatchNorm statistics at creation and "
                                "after each update (authors' code)")
    bn_recalibrate_batches: Union[int, None] = knob(None, "batches used to re-estimate BN statistics; "
                                                    "null = one full pass over the training loader")
    # model and data
    model: str = knob("resnet18", "architecture name (see fr_fast.models)")
    model_kwargs: dict[str, Any] = knob({}, "architecture options, e.g. {width: 16}")
    dataset: str = knob("cifar10", "mnist | fashion_mnist | cifar10 | cifar100 | svhn | tinyimagenet")
    data_dir: Union[str, None] = knob(None, "data set folder; null = $FR_FAST_DATA_DIR or data/<dataset>")
    pad_to: Union[int, None] = knob(None, "zero-pad images to this side length (e.g. 32 for 28 px MNIST)")
    low_pass_bandwidth: Union[int, None] = knob(None, "L-model: low-pass filter the inputs to this bandwidth "
                                                "(where: low_pass_in)")
    low_pass_in: str = knob("data", "where the L-model's filter acts: data (the paper: training and validation "
                            "images are filtered, the model is plain; fr-fast eval then measures Table 1: "
                            "accuracy on LPF_k(x) and PGD-20 on unfiltered x) | model (a LowPass first layer "
                            "filters every input, attacked ones included)")
    normalize: bool = knob(False, "per-dataset mean/std inside the model (paper: inputs only scaled to [0, 1])")
    augment: Union[str, None] = knob("auto", "augmentation policy; auto = the dataset's paper augmentation, "
                                     "none = off")
    val_fraction: float = knob(0.1, "fraction of the training set held out for validation (paper: 9:1)")
    split_seed: int = knob(0, "seed of the train/validation split, separate from seed: runs with different "
                           "seeds validate on the same images")
    num_workers: int = knob(0, "DataLoader worker processes (folder data sets)")
    fake_data: int = knob(0, "> 0: that many random images of the dataset's shape (smoke tests)")
    # optimisation
    epochs: int = knob(100, "training epochs")
    batch_size: int = knob(128, "global batch size (split evenly over DDP ranks)")
    lr: float = knob(0.1, "SGD learning rate")
    momentum: float = knob(0.9, "SGD momentum")
    weight_decay: float = knob(5e-4, "SGD weight decay (paper: 5e-4; 2e-4 for TRADES/MART)")
    lr_milestones: list[int] = knob([75, 90], "epoch indices at which the lr is multiplied by lr_gamma")
    lr_gamma: float = knob(0.1, "lr decay factor at each milestone")
    # attack used in training
    eps: float = knob(8 / 255, "L-inf radius of the training attack (8/255 is accepted)")
    alpha: float = knob(2 / 255, "PGD step size of the training attack")
    attack_steps: int = knob(10, "PGD steps of the training attack")
    trades_beta: float = knob(6.0, "TRADES robustness weight beta")
    mart_beta: float = knob(6.0, "MART robustness weight beta")
    attack_mode: str = knob("eval", "model mode while crafting training attacks: eval (the FR authors' code) | "
                            "train | auto (each method's reference code: AT train, TRADES/MART eval)")
    awp_gamma: Union[float, None] = knob(None, "AWP weight perturbation size; null = the AWP code's: 0.01 "
                                         "(AWP on AT), 0.005 (AWP on TRADES)")
    awp_warmup: Union[int, None] = knob(None, "first epoch index with AWP; null = the AWP code's: 0 (AWP on AT; "
                                        "5 on SVHN, its train_svhn.py), 9 (AWP on TRADES; its code counts epochs "
                                        "from 1: the 10th)")
    awp_proxy_lr: Union[float, None] = knob(None, "lr of AWP's proxy ascent step; null = the AWP code's: 0.01 "
                                            "(AWP on AT), the initial lr (AWP on TRADES)")
    # speed
    amp: str = knob("off", "autocast: off (float32, as the published runs) | auto (bf16, else fp16 + GradScaler "
                    "on CUDA; CPU: bf16 if native) | bf16 | fp16: speed switches (the head and FR stay float32)")
    channels_last: Union[bool, str] = knob("auto", "channels-last memory format; auto = on for CUDA, off on CPU")
    compile: bool = knob(False, "torch.compile the model")
    compile_mode: str = knob("default", "torch.compile mode: default | reduce-overhead (CUDA graphs: for small "
                             "models and batches, where kernel launches dominate) | max-autotune")
    cuda_graph: bool = knob(False, "the training step without host synchronisation (statistics stay on the device, "
                            "a non-finite loss skips the update on the device); on CUDA it is captured in one CUDA "
                            "graph and replayed per batch (see docs/training.md)")
    log_every: int = knob(50, "with cuda_graph: read the step statistics (loss, accuracy, skipped updates) every N "
                          "steps and at the end of the epoch; a non-finite loss stops the run at the next read")
    device: str = knob("auto", "auto | cpu | cuda | cuda:N")
    cpu_threads: Union[int, None] = knob(None, "torch CPU threads for this run; null = leave as is")
    # run
    seed: int = knob(0, "seed of weights, data order, augmentation and attacks (the split: split_seed)")
    deterministic: bool = knob(False, "deterministic algorithms (bit-exact resume on CPU; slower)")
    name: Union[str, None] = knob(None, "the run's label in fr-fast runs/compare, their plots and the RobustBench "
                                  "entry; also its folder runs/<preset>/<name> when out_dir is null")
    out_dir: Union[str, None] = knob(None, "folder for checkpoints and metrics; null = runs/<preset>/<name or UTC "
                                     "time> (with --resume and no name: the newest run of the preset that has a "
                                     "last.pt)")
    resume: Union[str, None] = knob(None, "null | last (out_dir/last.pt; also a bare --resume) | a checkpoint "
                                    "path", bare="last")
    branch_from: Union[str, None] = knob(None, "checkpoint to branch a new run from: its weights, optimiser, "
                                         "schedule position, average and RNG state, with this config's "
                                         "FR / WA / lam / distance settings from its epoch on (docs/gpu.md)")
    val_every: int = knob(1, "validate every N epochs (and after the last)")
    eval_pgd_steps: int = knob(20, "PGD steps of the validation attack")
    select_by: str = knob("auto", "metric choosing best.pt: pgd | clean | auto (clean for natural training "
                          "without FR, else pgd)")
    max_train_batches: Union[int, None] = knob(None, "cap on training batches per epoch (tests, benchmarks)")
    max_val_batches: Union[int, None] = knob(None, "cap on validation batches")
    progress: bool = knob(True, "progress display (bars on a terminal, plain periodic lines otherwise)")
    tensorboard: bool = knob(False, "also log the metrics as TensorBoard scalars in out_dir/tensorboard "
                             "(needs the tensorboard package)")
    paper_row: Union[str, None] = knob(None, "the configs/paper.yaml row this run reproduces (set by --paper; "
                                       "fr-fast eval prints its published numbers); \"modified from ROW: "
                                       "field=value, ...\" when a field that shapes the training was overridden")

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_choice("awp_base", self.awp_base, AWP_BASES)
        check_choice("fr", self.fr, FR_MODES)
        check_choice("distance", self.distance, ("l1", "l2", "cosine"))
        check_choice("fft", self.fft, ("1d", "2d"))
        check_choice("wa_role", self.wa_role, WA_ROLES)
        check_choice("attack_mode", self.attack_mode, ATTACK_MODES)
        check_choice("amp", self.amp, AMP_MODES)
        check_choice("compile_mode", self.compile_mode, COMPILE_MODES)
        check_choice("select_by", self.select_by, ("auto", "pgd", "clean"))
        check_choice("low_pass_in", self.low_pass_in, LOW_PASS_PLACES)
        reserved = sorted(set(self.model_kwargs) & MODEL_ARGUMENTS)
        if reserved:
            raise ValueError(f"model_kwargs may not set {', '.join(reserved)}: they come from the data set and the "
                             "fields normalize / low_pass_bandwidth / model")
        if not DEVICE_NAME.match(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.name is not None and not RUN_NAME.match(self.name):
            raise ValueError(f"name must be 1-100 characters of A-Z a-z 0-9 . _ + - not starting with a dot or "
                             f"dash (it names the run's folder), got {self.name!r}")
        if isinstance(self.channels_last, str):
            check_choice("channels_last", self.channels_last, ("auto",))
        check_ranges(self, RANGES)
        if sorted(self.lr_milestones) != list(self.lr_milestones):
            raise ValueError(f"lr_milestones must be increasing, got {self.lr_milestones}")
        if self.wa_teacher and self.resolved_fr_start() < self.resolved_wa_start():
            raise ValueError(f"fr='frwa' with wa_role={self.wa_role!r} needs the weight average before FR starts: "
                             f"fr_start_epoch ({self.resolved_fr_start()}) < wa_start_epoch "
                             f"({self.resolved_wa_start()})")
        self._check_switches_on()

    def _check_switches_on(self) -> None:
        """FR / WA whose start is derived from the first milestone must start within the run.

        A derived start at or after the end would silently train something else (plain AT without FR, no
        average) while the run is labelled FR. An explicit ``fr_start_epoch`` / ``wa_start_epoch`` is
        taken as meant.
        """
        milestone = f"the first lr milestone ({self._first_milestone()})" if self.lr_milestones else "epoch 0"
        if self.fr != "none" and self.fr_start_epoch is None and self.resolved_fr_start() >= self.epochs:
            raise ValueError(
                f"fr={self.fr!r} would never switch on: fr_start_epoch defaults to {milestone} but epochs="
                f"{self.epochs}; set --fr-start-epoch=N (N < {self.epochs}), lower --lr-milestones, or use --fr=none")
        if self.uses_wa and self.wa_start_epoch is None:
            # teacher/both: the average must exist while FR runs; evaluated: it is created at the end of epoch
            # index wa_start - 1, which must be inside the run.
            last = self.epochs - 1 if self.wa_teacher else self.epochs
            if self.resolved_wa_start() > last:
                raise ValueError(
                    f"the weight average would never switch on: wa_start_epoch defaults to {milestone}"
                    f"{' + 1' if self.wa_role == 'evaluated' else ''} = {self.resolved_wa_start()} but epochs="
                    f"{self.epochs}; set --wa-start-epoch=N or lower --lr-milestones")

    def _first_milestone(self) -> int:
        return self.lr_milestones[0] if self.lr_milestones else 0

    def resolved_fr_start(self) -> int:
        """Epoch index from which the FR term is added (None -> the first lr milestone)."""
        return self._first_milestone() if self.fr_start_epoch is None else self.fr_start_epoch

    def resolved_wa_start(self) -> int:
        """Epoch index from which the weight average exists; it is built from the weights at the end of the
        epoch before and updated after every later epoch. None -> the first lr milestone (teacher/both), the
        first milestone + 1 (evaluated: the authors' code averages from the first epoch at the decayed lr on).
        """
        if self.wa_start_epoch is not None:
            return self.wa_start_epoch
        return self._first_milestone() + (1 if self.wa_role == "evaluated" and self.lr_milestones else 0)

    def resolved_select_by(self) -> str:
        """The validation metric that picks best.pt: "val_pgd" or "val_clean" of the student, or of the weight
        average ("avg_val_pgd", "avg_val_clean") when it is the evaluated model (``wa_role`` evaluated/both)."""
        prefix = "avg_" if self.wa_evaluated else ""
        if self.select_by == "auto":
            return prefix + ("val_clean" if self.method == "natural" and self.fr == "none" else "val_pgd")
        return f"{prefix}val_{self.select_by}"

    def resolved_attack_mode(self) -> str:
        """"train" or "eval": the BN mode of the model while the training attack is crafted."""
        if self.attack_mode != "auto":
            return self.attack_mode
        return REFERENCE_ATTACK_MODES[self.awp_base if self.method == "awp" else self.method]

    def resolved_awp(self) -> tuple[float, int, float]:
        """(gamma, first epoch index with AWP, proxy lr): the fields, or the AWP code's defaults for awp_base
        (and, for the warm-up, its SVHN script: 5 epochs for AT-AWP on SVHN)."""
        gamma, warmup, proxy_lr = AWP_DEFAULTS[self.awp_base]
        if self.dataset == "svhn":
            warmup = AWP_SVHN_WARMUP.get(self.awp_base, warmup)
        return (gamma if self.awp_gamma is None else self.awp_gamma,
                warmup if self.awp_warmup is None else self.awp_warmup,
                (proxy_lr if proxy_lr is not None else self.lr) if self.awp_proxy_lr is None else self.awp_proxy_lr)

    @property
    def uses_wa(self) -> bool:
        """A weight average is kept (fr=frwa, or wa=true)."""
        return self.fr == "frwa" or self.wa

    @property
    def wa_teacher(self) -> bool:
        """The weight average is FR's teacher (fr=frwa with wa_role teacher or both)."""
        return self.fr == "frwa" and self.wa_role in ("teacher", "both")

    @property
    def wa_evaluated(self) -> bool:
        """The weight average is the model that is validated, selected (best.pt) and evaluated by default."""
        return self.uses_wa and self.wa_role in ("evaluated", "both")


# The valid range of every numeric field (None, where allowed, is always valid; lists: every item).
# Finite values only: "inf)" is an open bound, so NaN and inf are rejected everywhere.
RANGES: dict[str, str] = {
    "lr": "(0, inf)", "momentum": "[0, 1)", "weight_decay": "[0, inf)", "lr_gamma": "(0, 1]",
    "lam": "[0, inf)", "eps": "(0, 1]", "alpha": "(0, 1]", "trades_beta": "[0, inf)", "mart_beta": "[0, inf)",
    "awp_gamma": "[0, inf)", "awp_proxy_lr": "(0, inf)", "val_fraction": "(0, 1)",
    "epochs": "[1, inf)", "batch_size": "[1, inf)", "attack_steps": "[1, inf)", "val_every": "[1, inf)",
    "eval_pgd_steps": "[1, inf)", "max_train_batches": "[1, inf)", "max_val_batches": "[1, inf)",
    "bn_recalibrate_batches": "[1, inf)", "cpu_threads": "[1, 4096]", "num_workers": "[0, inf)",
    "fake_data": "[0, inf)", "awp_warmup": "[0, inf)", "fr_start_epoch": "[0, inf)", "wa_start_epoch": "[0, inf)",
    "lr_milestones": "[0, inf)", "pad_to": "[1, inf)", "low_pass_bandwidth": "[1, inf)",
    "log_every": "[1, inf)",
}


def resolve_preset(path: str | Path) -> Path:
    """Find a preset by path, or by name (with or without .yaml) among the shipped presets."""
    path = Path(path)
    candidates = [path] + [d / name for d in CONFIG_DIRS for name in (path, Path(f"{path}.yaml"))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = ", ".join(str(d) for d in CONFIG_DIRS) or "no presets folder found"
    raise FileNotFoundError(f"config preset {str(path)!r} not found (looked in . and {where})")


def load_preset(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML preset into a raw dict, following ``base:`` links (child values win)."""
    path = resolve_preset(path).resolve()
    if path.name == "paper.yaml":
        raise ValueError(f"{path} maps the paper's table rows, it is not a preset: use --paper ROW (docs/presets.md)")
    if path in _seen:
        raise ValueError(f"config preset {path} inherits from itself via 'base:'")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"config preset {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"config preset {path}: invalid YAML: {' '.join(str(exc).split())}") from None
    if raw is None or raw == {}:
        raise ValueError(f"config preset {path} is empty; give at least one field (or no preset for the defaults)")
    if not isinstance(raw, dict):
        raise ValueError(f"config preset {path} must be a YAML mapping, got {type(raw).__name__}")
    return compose(raw, path.parent, str(path), _seen + (path,))


def compose(raw: dict[str, Any], folder: Path, where: str, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Merge a raw mapping over the presets its ``base:`` names (one path or a list; later ones win).

    Paths are relative to ``folder``; unknown fields raise a ValueError naming ``where``.
    """
    raw = dict(raw)
    bases = raw.pop("base", None)
    if isinstance(bases, (str, Path)):
        bases = [bases]
    if bases is not None and not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ValueError(f"'base' in {where} must be a preset path or a list of them, got {bases!r}")
    values: dict[str, Any] = {}
    for base in bases or []:
        base_path = Path(base) if Path(base).is_absolute() else folder / base
        if not base_path.suffix:
            base_path = base_path.with_suffix(".yaml")
        values.update(load_preset(base_path, _seen))
    types_ = field_types(TrainConfig)
    for key in raw:
        if key not in types_:
            raise unknown_field(key, where, TrainConfig)
    values.update(raw)
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from an optional YAML preset plus ``key=value`` overrides.

    Parameters
    ----------
    path : preset file, or a preset name in ``configs/`` (``"mnist_cnn_at_fr"``); None -> defaults.
    overrides : strings such as ``"--lr=0.05"``, ``"fr=frwa"``, ``"--eps=8/255"``, ``"--compile"``.

    Raises
    ------
    ValueError : unknown field (close matches suggested), ill-typed value, or an invalid combination.
    FileNotFoundError : the preset does not exist.
    """
    values = load_preset(path) if path is not None else {}
    values.update(parse_overrides(list(overrides or []), TrainConfig))
    if values.get("out_dir") is None:
        values["out_dir"] = run_dir(Path(path).stem if path is not None else "default", values.get("resume"),
                                    label=values.get("name") if isinstance(values.get("name"), str) else None)
    return config_from_dict(values, TrainConfig, where=str(path) if path is not None else "overrides")


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain-Python dict of a config (what checkpoints and metrics store)."""
    return dataclasses.asdict(cfg)
