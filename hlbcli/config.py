"""The validated configuration: the core's settings models and the config model built from them
and the active tricks' sections (the layers it is read from are :mod:`hlbcli.layers`'s).

Every model is frozen and forbids unknown keys. The core owns the ``data``, ``model`` and
``train`` sections; each active trick adds the section its ``hlb_config_model`` hook returns.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from hlbcli.errors import ConfigError, UsageError



def _refuse(self, *args, **kwargs):
    raise TypeError("the config is frozen, lists and tables inside it too: build a changed copy "
                    "(model_copy(update=...)) instead of editing it in place")


class FrozenList(list):
    """A settings model's list, frozen with it: equal to (and serialised as) a plain list, but
    ``append``, ``cfg.model.widths[0] = 8`` and the other in-place edits raise ``TypeError``."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __reduce__(self):
        return FrozenList, (list(self),)


class FrozenDict(dict):
    """A settings model's table, frozen with it (see :class:`FrozenList`)."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):
        return FrozenDict, (dict(self),)


def _deep_frozen(value: Any) -> Any:
    if isinstance(value, list) and not isinstance(value, FrozenList):
        return FrozenList(_deep_frozen(v) for v in value)
    if isinstance(value, dict) and not isinstance(value, FrozenDict):
        return FrozenDict({k: _deep_frozen(v) for k, v in value.items()})
    return value


class Settings(BaseModel):
    """Base for every settings model: frozen, deeply (its lists and tables refuse in-place
    edits too: a trick cannot change the config through ``cfg.model.widths.append``), unknown
    keys rejected, floats finite, types strict (``true`` is not the integer 1, ``1`` is not a
    boolean, ``2.0`` is not an integer)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)

    @model_validator(mode="after")
    def _freeze_containers(self) -> "Settings":
        for name, value in self.__dict__.items():
            frozen = _deep_frozen(value)
            if frozen is not value:
                self.__dict__[name] = frozen  # the model itself is frozen: set behind its back, once
        return self


#: the largest seed torch's generators take (a signed 64-bit integer)
MAX_SEED = 2**63 - 1
#: the most seeds one command trains (per arm for ``hlb ablate``), and the most a plan read back may ask for
MAX_RUNS = 10_000
#: the most arms an ablation plan read back may hold
MAX_ARMS = 1_000
#: the widest conv group the settings accept (the 96 preset uses 512)
MAX_WIDTH = 4096
#: the most synthetic images per split (3 KiB each at 32px)
MAX_SYNTHETIC = 1_000_000
#: ``train.eval_batch_size = "auto"``: airbench's size, on CUDA and on a CPU that keeps its
#: freed memory (``train.host_memory``); and on a CPU whose C allocator returns it to the system
EVAL_BATCH = 2000
EVAL_BATCH_CPU_SYSTEM = 128


class DataSettings(Settings):
    """Which dataset to train on."""

    dataset: Literal["cifar10", "cifar100", "synthetic"] = Field(
        "cifar10", description="cifar10 / cifar100 (upstream python layout) or a seeded synthetic set"
    )
    synthetic_train: int = Field(4096, gt=0, le=MAX_SYNTHETIC, description="synthetic: training images")
    synthetic_test: int = Field(1024, gt=0, le=MAX_SYNTHETIC, description="synthetic: test images")
    synthetic_classes: int = Field(10, ge=2, le=1000, description="synthetic: number of classes")
    synthetic_size: int = Field(32, ge=8, le=256, description="synthetic: image side in pixels")
    synthetic_noise: float = Field(0.25, ge=0, le=10, description="synthetic: pixel noise (0..1 scale)")
    synthetic_seed: int = Field(0, ge=0, le=MAX_SEED, description="synthetic: generator seed (the data, not the run)")


class ModelSettings(Settings):
    """The conv net: a 2x2 stem, conv groups that halve the resolution, max-pool, linear head."""

    widths: list[int] = Field([64, 256, 256], min_length=1, max_length=5, description="channels of each conv group")
    depth: int = Field(2, ge=2, le=3, description="convs per group; 3 adds a residual over the last two")
    stem_width: int = Field(24, ge=1, le=MAX_WIDTH, description="output channels of the stem conv (whitening needs 2*C*k*k)")
    stem_kernel: int = Field(2, ge=1, le=5, description="stem conv kernel size (no padding)")
    scaling_factor: float = Field(1 / 9, gt=0, le=100, description="the logits are multiplied by this")
    bn_momentum: float = Field(0.1, gt=0, le=1, description="batchnorm running-stat momentum (PyTorch convention)")
    bn_eps: float = Field(1e-5, gt=0, le=1, description="batchnorm epsilon")
    activation: Literal["gelu", "silu"] = Field(
        "gelu", description="nonlinearity of the conv groups (hiverge's record: silu); the stem's stays GELU"
    )
    head_init_std: float = Field(
        0.0, ge=0, description="rescale the head's initial weights to this std (airbench94_muon: 1); 0 keeps PyTorch's init"
    )

    @field_validator("widths")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(w < 1 for w in v):
            raise ValueError("every width must be a positive integer")
        if any(w > MAX_WIDTH for w in v):
            raise ValueError(f"every width must be at most {MAX_WIDTH}")
        return v


class TrainSettings(Settings):
    """The optimisation: hyperparameters in airbench's decoupled form."""

    epochs: float = Field(9.9, gt=0, le=1000, description="training length in epochs (fractional allowed)")
    batch_size: int = Field(1024, gt=0, le=MAX_SYNTHETIC, description="examples per step (the last partial batch is dropped)")
    lr: float = Field(11.5, ge=1e-3, description="learning rate per 1024 examples, decoupled from momentum (the presets: 9 to 5260; the decoupled weight decay is divided by it, so a tiny lr overflows)")
    momentum: float = Field(0.85, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(True, description="Nesterov momentum")
    weight_decay: float = Field(0.0153, ge=0, le=1, description="weight decay per 1024 examples, decoupled from lr")
    lr_start: float = Field(0.2, ge=0, le=100, description="lr multiplier at step 0")
    lr_peak_at: float = Field(0.23, ge=0, le=1, description="fraction of training where the lr multiplier is 1")
    lr_end: float = Field(0.07, ge=0, le=100, description="lr multiplier at the last step")
    precision: Literal["auto", "fp32", "fp16", "bf16", "fp16-weights", "bf16-weights", "fp16-all", "bf16-all"] = Field(
        "auto",
        description=(
            "fp16-weights / bf16-weights: the net's weights, activations and optimizer state in half"
            " precision, batchnorm in fp32, no autocast (airbench's GPU path); fp16-all / bf16-all: the same"
            " with batchnorm in half precision too (hiverge's record casts every module); fp16 / bf16: fp32"
            " weights under autocast; auto: fp16-weights on CUDA, fp32 on the CPU"
        ),
    )
    channels_last: bool = Field(True, description="channels_last memory format (faster convs on CUDA and on CPU)")
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile the model (auto: on for CUDA)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default",
        description="torch.compile mode: reduce-overhead and max-autotune capture CUDA graphs (on CUDA)",
    )
    compile_loss: bool = Field(
        False,
        description=(
            "compile the forward and the loss as one graph (fullgraph, train.compile_mode) for the training"
            " step, where the model is compiled (hiverge's record); the evaluation keeps the compiled model"
        ),
    )
    optimizer_impl: Literal["auto", "fused", "foreach", "for-loop"] = Field(
        "auto", description="SGD kernels: fused (one kernel per dtype), foreach, or per tensor; auto: fused"
    )
    host_memory: Literal["auto", "keep", "system"] = Field(
        "auto",
        description=(
            "the C allocator on the CPU: keep: freed blocks stay with the process and the next step"
            " reuses them (glibc, no mmap per large block, no trim), instead of the kernel zeroing fresh"
            " pages for every activation; system: as the process has it; auto: keep for training on the"
            " CPU under glibc, system on CUDA"
        ),
    )
    eval_every_epoch: bool = Field(True, description="measure val accuracy (no TTA) after every epoch, untimed")
    eval_batch_size: int | Literal["auto"] = Field(
        "auto",
        description=(
            f"batch size for evaluation (the same logits at any size); auto: {EVAL_BATCH}, or"
            f" {EVAL_BATCH_CPU_SYSTEM} on the CPU where train.host_memory is system (each large batch's"
            " memory is then faulted in and zeroed afresh, up to 2x slower)"
        ),
    )

    @field_validator("eval_batch_size", mode="before")
    @classmethod
    def _eval_batch(cls, v: Any) -> Any:
        if v == "auto" or (type(v) is int and 0 < v <= MAX_SYNTHETIC):
            return v
        raise ValueError(f'must be "auto" or an integer from 1 to {MAX_SYNTHETIC}')


def eval_batch_size(value: int | str, device: Any, kept: bool) -> int:
    """``train.eval_batch_size`` with ``auto`` resolved for ``device`` (a torch.device or its
    type's name) and the process's C allocator (``kept``: whether ``train.host_memory=keep``
    holds, as the session resolved it when it started). A batch of 2000 is airbench's size and the fastest on
    CUDA and on a CPU that reuses freed memory. On a CPU that returns it to the system, every
    batch's activations are faulted in and zeroed afresh, and a small batch is faster (the
    narrowed ``94`` net evaluated 2000 test images in 0.92 s at 2000 a batch, 0.46 s at 128; with
    the memory kept, 0.43 s at 2000 and 0.49 s at 128)."""
    if value != "auto":
        return int(value)
    kind = device if isinstance(device, str) else device.type
    return EVAL_BATCH_CPU_SYSTEM if kind == "cpu" and not kept else EVAL_BATCH


def build_config_model(sections: dict[str, type[BaseModel]]) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "description": (str, ""),
        "tricks": (list[str], Field(default_factory=list)),
        # trick taken out -> the trick in its place (``--swap``, or a trick's ``replaces``)
        "replaced": (dict[str, str], Field(default_factory=dict)),
        "data": (DataSettings, DataSettings()),
        "model": (ModelSettings, ModelSettings()),
        "train": (TrainSettings, TrainSettings()),
    }
    for name, model in sections.items():
        if name in fields:
            raise UsageError(f"trick section '{name}' clashes with a core section", "rename the trick")
        fields[name] = (model, model())
    return create_model("HlbConfig", __base__=Settings, **fields)


def _keys_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the (sub)model at ``loc`` inside ``model``; [] when not a model."""
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        ann = field.annotation if field is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def unknown_key_message(key: str, known: list[str], what: str = "key", also: list[str] = ()) -> str:
    """'unknown key, did you mean 'epochs'?' (difflib), else the list of valid keys."""
    close = difflib.get_close_matches(key, [*known, *also], n=1, cutoff=0.6)
    if close:
        return f"unknown {what}, did you mean '{close[0]}'?"
    return f"unknown {what} (valid: {', '.join(known)})" if known else f"unknown {what}"


def _rows_from(e: ValidationError, model: type[BaseModel], others: list[str] = ()) -> list[tuple[str, str]]:
    rows = []
    for err in e.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(x) for x in loc) or "config"
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and loc:
            top = len(loc) == 1
            msg = unknown_key_message(str(loc[-1]), _keys_at(model, loc[:-1]), "section" if top else "key", others if top else [])
        elif err["type"] in LIST_TYPES and not isinstance(err.get("input"), (dict, list, tuple)):
            msg = f"takes a list (got {err['input']!r}; write it in brackets: {_bracketed(err['input'])})"
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            msg += f" (got {err['input']!r})"
        rows.append((where, msg))
    return rows


#: pydantic's error types for a value that is not the list (or tuple) a field takes
LIST_TYPES = ("list_type", "tuple_type")


def _bracketed(value: Any) -> str:
    """A value that should have been a list, as the TOML list it was meant as: ``32,64,64`` ->
    ``[32,64,64]``, ``a,b`` -> ``["a","b"]``."""

    def item(part: str) -> str:
        try:
            v = tomllib.loads(f"v = {part}")["v"]
        except tomllib.TOMLDecodeError:
            v = None
        return part if isinstance(v, (int, float)) else json.dumps(part)

    parts = value.split(",") if isinstance(value, str) else [json.dumps(value)]
    return "[" + ",".join(item(p.strip()) for p in parts) + "]"


def _not_a_list(e: ValidationError, user: dict[str, str]) -> UsageError | None:
    """A ``--set KEY=VALUE`` (or ``--vary``) whose key takes a list and whose value is none
    (``--set model.widths=32,64,64``): one line saying to write the brackets."""
    for err in e.errors():
        key = ".".join(str(x) for x in err["loc"])
        flag, _, written = user.get(key, "").partition(" ")
        if (err["type"] not in LIST_TYPES or isinstance(err.get("input"), (list, tuple, dict))
                or flag not in ("--set", "--vary") or written != key):
            continue
        got = err["input"] if isinstance(err["input"], str) else json.dumps(err["input"])
        fix = f"{key}={_bracketed(err['input'])}"
        fix = f"{flag} '{fix}'" if '"' in fix else f"{flag} {fix}"
        if flag == "--vary":  # the arm's error names the --vary already
            return UsageError(f"{key} takes a list", f"write {fix}")
        return UsageError(f"--set {key}={got}: {key} takes a list", f"write {fix}")
    return None


def validate(data: dict, sections: dict[str, type[BaseModel]], inactive: set[str],
             user: dict[str, str] | None = None) -> BaseModel:
    """Validate the merged dict. Sections of known but inactive tricks are dropped. ``user``
    maps each key the user wrote to where (``--set KEY``), for the messages."""
    data = {k: v for k, v in data.items() if k not in inactive}
    model = build_config_model(sections)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lone = _not_a_list(e, user or {})
        if lone is not None:
            raise lone from None
        rows = _rows_from(e, model, sorted(inactive))
        first = rows[0][0].split(".")[0] if rows else ""
        if first in sections:  # a trick's section: its own listing has every key, enabled or not
            hint = f"see `hlb tricks show {first}` for its keys, types and bounds"
        else:
            hint = "see `hlb config show --preset NAME` for the valid keys"
        raise ConfigError(rows, hint) from None


def config_defaults(cfg: BaseModel) -> dict:
    """Every setting of ``cfg``'s sections at its default, as :func:`to_dict` writes it: what a
    record written before a setting existed ran with (see :func:`hlbcli.readback.with_defaults`)."""
    return to_dict(type(cfg)())


def to_dict(cfg: BaseModel) -> dict:
    """The config as plain data; ``replaced`` only where a trick took another's place."""
    out = cfg.model_dump(mode="json")
    if not out.get("replaced", True):
        del out["replaced"]
    return out
