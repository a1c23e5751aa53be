"""Layered, validated configuration: preset < --config FILE < --set key=value.

Every model is frozen and forbids unknown keys. The core owns the ``data``, ``model`` and
``train`` sections; each active trick adds the section its ``hlb_config_model`` hook returns.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from hlbcli.errors import ConfigError, UsageError



class Settings(BaseModel):
    """Base for every settings model: frozen, unknown keys rejected, floats finite, types
    strict (``true`` is not the integer 1, ``1`` is not a boolean, ``2.0`` is not an integer)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)


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
    synthetic_noise: float = Field(0.25, ge=0, description="synthetic: pixel noise (0..1 scale)")
    synthetic_seed: int = Field(0, ge=0, le=MAX_SEED, description="synthetic: generator seed (the data, not the run)")


class ModelSettings(Settings):
    """The conv net: a 2x2 stem, conv groups that halve the resolution, max-pool, linear head."""

    widths: list[int] = Field([64, 256, 256], min_length=1, max_length=5, description="channels of each conv group")
    depth: int = Field(2, ge=2, le=3, description="convs per group; 3 adds a residual over the last two")
    stem_width: int = Field(24, ge=1, le=MAX_WIDTH, description="output channels of the stem conv (whitening needs 2*C*k*k)")
    stem_kernel: int = Field(2, ge=1, le=5, description="stem conv kernel size (no padding)")
    scaling_factor: float = Field(1 / 9, gt=0, description="the logits are multiplied by this")
    bn_momentum: float = Field(0.1, gt=0, le=1, description="batchnorm running-stat momentum (PyTorch convention)")
    bn_eps: float = Field(1e-5, gt=0, description="batchnorm epsilon")
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
    lr: float = Field(11.5, gt=0, description="learning rate per 1024 examples, decoupled from momentum")
    momentum: float = Field(0.85, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(True, description="Nesterov momentum")
    weight_decay: float = Field(0.0153, ge=0, description="weight decay per 1024 examples, decoupled from lr")
    lr_start: float = Field(0.2, ge=0, description="lr multiplier at step 0")
    lr_peak_at: float = Field(0.23, ge=0, le=1, description="fraction of training where the lr multiplier is 1")
    lr_end: float = Field(0.07, ge=0, description="lr multiplier at the last step")
    precision: Literal["auto", "fp32", "fp16", "bf16", "fp16-weights", "bf16-weights"] = Field(
        "auto",
        description=(
            "fp16-weights / bf16-weights: the net's weights, activations and optimizer state in half"
            " precision, batchnorm in fp32, no autocast (airbench's GPU path); fp16 / bf16: fp32 weights"
            " under autocast; auto: fp16-weights on CUDA, fp32 on the CPU"
        ),
    )
    channels_last: bool = Field(True, description="channels_last memory format (faster convs on CUDA and on CPU)")
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile the model (auto: on for CUDA)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default",
        description="torch.compile mode: reduce-overhead and max-autotune capture CUDA graphs (on CUDA)",
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


# --- TOML helpers ----------------------------------------------------------------------------


#: the deepest nesting of tables and lists a config may have (the core's is two levels)
MAX_DEPTH = 32


def check_depth(data: Any, where: str) -> None:
    """Refuse a config nested deeper than :data:`MAX_DEPTH` (counted without recursion)."""
    stack = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UsageError(f"{where} is nested more than {MAX_DEPTH} levels deep", "a config is sections of keys: flatten it")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def parse_value(text: str) -> Any:
    """Parse a --set value as a TOML value; anything else is a plain string, except what
    looks like a list or a table (``[...]``, ``{...}``): that must be valid TOML."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except RecursionError:
        raise UsageError(f"--set value is nested more than {MAX_DEPTH} levels deep", "a config is sections of keys: flatten it") from None
    except tomllib.TOMLDecodeError:
        if text[:1] in "[{":
            raise UsageError(
                f"{text!r} is not a valid TOML list or table",
                'quote strings inside lists, e.g. [16,"abc"]; numbers and true/false go bare',
            ) from None
        return text


def _toml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):  # a TOML basic string: JSON's escapes are TOML's, plus DEL
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_scalar(x) for x in v) + "]"
    if v is None:
        return '""'
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _toml_key(k: str) -> str:
    return k if k and all(c.isascii() and (c.isalnum() or c in "_-") for c in k) else _toml_scalar(str(k))


def dump_toml(data: dict, _prefix: str = "") -> str:
    """Write a nested dict as TOML (scalars first, then one table per sub-dict)."""
    lines = [f"{_toml_key(k)} = {_toml_scalar(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = "\n".join(lines)
    for k, v in data.items():
        if isinstance(v, dict):
            name = f"{_prefix}{_toml_key(k)}"
            body = dump_toml(v, name + ".")
            out += ("\n\n" if out else "") + f"[{name}]\n" + body
    return out


# --- layering --------------------------------------------------------------------------------


def preset_names() -> list[str]:
    files = resources.files("hlbcli.presets").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".toml"))


#: config and preset files larger than this are refused (a preset is a few KiB)
MAX_TOML_BYTES = 1 << 20


def load_toml_file(path: str | Path, what: str) -> dict:
    p = Path(path)
    try:
        p.stat()
    except OSError as e:  # a name too long, a link loop: one line naming the option
        from hlbcli.paths import path_error

        err = path_error(e, {"config file": "--config", "preset file": "--preset"}.get(what, what), p)
        if err:
            raise err from None
    if not p.exists():
        raise UsageError(f"{what} not found: {p}", "check the path")
    if p.is_dir():
        raise UsageError(f"{what} is a directory, not a TOML file: {p}", "name a .toml file")
    if not p.is_file():  # a device (/dev/zero reads forever) or a FIFO (blocks until written)
        raise UsageError(f"{what} is not a regular file: {p}", "name a .toml file")
    if p.stat().st_size > MAX_TOML_BYTES:
        raise UsageError(f"{what} is too large for a config ({p.stat().st_size} bytes): {p}", f"a config is a TOML file under {MAX_TOML_BYTES // 1024} KiB")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} cannot be read: {p}: {e.__class__.__name__}", "check its permissions and encoding") from None
    try:
        if p.suffix == ".json":  # a resolved config hlb wrote (an ablation arm's config.json)
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object of sections")
            return data
        return tomllib.loads(text)
    except ValueError as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        kind = "JSON" if p.suffix == ".json" else "TOML"
        raise UsageError(f"{what} is not valid {kind}: {p}: {e}", "fix the syntax at that line") from None
    except RecursionError:
        raise UsageError(f"{what} is nested more than {MAX_DEPTH} levels deep: {p}", "a config is sections of keys: flatten it") from None


def load_preset(name: str) -> dict:
    """A preset by name (shipped in the package) or by path to a TOML file (or to a resolved
    config as JSON, as ``hlb ablate`` writes for each arm)."""
    if name.endswith((".toml", ".json")) or "/" in name:
        return load_toml_file(name, "preset file")
    ref = resources.files("hlbcli.presets").joinpath(f"{name}.toml")
    if not ref.is_file():
        raise UsageError(f"unknown preset '{name}'", f"choose one of: {', '.join(preset_names())}")
    return tomllib.loads(ref.read_text(encoding="utf-8"))


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_set(data: dict, assignment: str) -> dict:
    """Apply one ``a.b=value`` override."""
    if "=" not in assignment:
        raise UsageError(f"--set {assignment!r} has no '='", "write --set section.key=value, e.g. --set train.epochs=5")
    key, _, raw = assignment.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise UsageError(f"--set {assignment!r} has an empty key", "write --set section.key=value")
    value = parse_value(raw.strip())
    check_depth(value, f"--set {key}")
    out = copy.deepcopy(data)
    node = out
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise UsageError(f"--set {key}: '{p}' is a value, not a section", "set the value itself, not a key below it")
        node = nxt
    old = node.get(parts[-1])
    # a table merges into the section it names (``train={epochs=1}`` changes epochs, keeps the rest)
    node[parts[-1]] = deep_merge(old, value) if isinstance(value, dict) and isinstance(old, dict) else value
    return out


def layered(preset: str, config_file: str | None, sets: list[str]) -> dict:
    return layered_sources(preset, config_file, sets)[0]


def leaf_keys(data: Any, prefix: str = "") -> list[str]:
    """The dotted keys of a nested dict's values (``train.epochs``); a list is one value."""
    if not isinstance(data, dict) or not data:
        return [prefix] if prefix else []
    return [k for key, v in data.items() for k in leaf_keys(v, f"{prefix}.{key}" if prefix else str(key))]


def layered_sources(preset: str, config_file: str | None, sets: list[str]) -> tuple[dict, dict[str, str]]:
    """The merged dict, and each key the user wrote (not the preset), dotted
    (``train.epochs``), with where: ``--config FILE`` or ``--set KEY``."""
    data = load_preset(preset)
    check_depth(data, f"preset {preset}")
    user: dict[str, str] = {}
    if config_file:
        over = load_toml_file(config_file, "config file")
        check_depth(over, f"config file {config_file}")
        data = deep_merge(data, over)
        user.update({k: f"--config {config_file}" for k in leaf_keys(over)})
    for s in sets:
        data = apply_set(data, s)
        key = s.partition("=")[0].strip()
        value = parse_value(s.partition("=")[2].strip())
        user.update({k: f"--set {key}" for k in leaf_keys(value, key)})
    return data, user


def check_overridden(user: dict[str, str], overrides: dict[str, str]) -> None:
    """A key the user wrote that an active trick sets itself (``model.bn_eps`` under
    ``noisy_bn``: ``overrides`` maps it to the trick) would do nothing: an error."""
    rows = [(k, f"does nothing while trick '{overrides[k]}' is active (it sets this itself; {where})")
            for k, where in user.items() if k in overrides]
    if rows:
        trick = overrides[rows[0][0]]
        raise ConfigError(rows, f"set it in the [{trick}] section (see `hlb tricks show {trick}`), or add --disable {trick}")


def check_inactive_sections(user: dict[str, str], inactive: set[str], disable: list[str]) -> None:
    """A section the user wrote for a known trick that is off is an error (the setting would
    silently do nothing), unless ``--disable`` names that trick: the preset's and the user's
    settings for a trick switched off on purpose (an ablation arm) stay accepted."""
    stray: list[tuple[str, str]] = []
    for key, where in user.items():
        k = key.split(".")[0]
        if k in inactive and k not in disable and k not in {s for s, _ in stray}:
            stray.append((k, where))
    if stray:
        rows = [(k, f"trick '{k}' is not active, so {where} would do nothing") for k, where in stray]
        name = stray[0][0]
        raise ConfigError(rows, f"add --enable {name} to turn it on, or drop the setting")


def active_tricks(data: dict, enable: list[str], disable: list[str]) -> list[str]:
    """The preset's trick list plus --enable, minus --disable, in order, without repeats."""
    tricks = data.get("tricks", [])
    if not isinstance(tricks, list) or not all(isinstance(t, str) for t in tricks):
        raise ConfigError([("tricks", "must be a list of trick names")], "e.g. tricks = [\"flip\", \"ema\"]")
    out: list[str] = []
    for t in [*tricks, *enable]:
        if t not in out and t not in disable:
            out.append(t)
    return out


def build_config_model(sections: dict[str, type[BaseModel]]) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "description": (str, ""),
        "tricks": (list[str], Field(default_factory=list)),
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
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            msg += f" (got {err['input']!r})"
        rows.append((where, msg))
    return rows


def validate(data: dict, sections: dict[str, type[BaseModel]], inactive: set[str]) -> BaseModel:
    """Validate the merged dict. Sections of known but inactive tricks are dropped."""
    data = {k: v for k, v in data.items() if k not in inactive}
    model = build_config_model(sections)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        rows = _rows_from(e, model, sorted(inactive))
        first = rows[0][0].split(".")[0] if rows else ""
        if first in sections:  # a trick's section: its own listing has every key, enabled or not
            hint = f"see `hlb tricks show {first}` for its keys, types and bounds"
        else:
            hint = "see `hlb config show --preset NAME` for the valid keys"
        raise ConfigError(rows, hint) from None


def to_dict(cfg: BaseModel) -> dict:
    return cfg.model_dump(mode="json")
