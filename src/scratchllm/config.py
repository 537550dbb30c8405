"""One typed configuration for a run: the model (`GPTConfig`) and the training (`TrainConfig`).

A config is built in layers: a preset, then a TOML file, then `--set section.key=value` overrides.
Every layer is type checked against the dataclass fields, so a typo or a wrong-typed value is an
error the user sees at once instead of a setting that silently does nothing. A run folder keeps the
final config as `config.toml`, which is everything needed to rebuild the model and continue.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from scratchllm.model.gpt import GPTConfig
from scratchllm.util import UserError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the small reader below covers the files we write
    tomllib = None

DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: see train/precision.py
ORDERS = ("random", "sequential")
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


@dataclass
class TrainConfig:
    """Everything about how the model is trained; sizes count sequences, steps count optimizer steps."""

    batch_size: int = 16  # sequences per micro-batch (per rank)
    grad_accum: int = 1  # micro-batches per optimizer step (per rank)
    max_steps: int = 2000
    max_tokens: int = 0  # stop after this many training tokens (0: no token budget)
    max_minutes: float = 0.0  # stop after this much wall time of one invocation (0: no time budget)
    lr: float = 1e-3
    min_lr: float = 1e-4  # the cosine decays to this at max_steps
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 turns clipping off
    embed_lr: float = 0.0  # AdamW's learning rate for the embedding tables (0: train.lr, as for the rest)
    optimizer: str = "adamw"  # adamw | muon (Muon for the blocks' matrices, AdamW for the rest)
    muon_lr: float = 0.02
    muon_momentum: float = 0.95  # reached after muon_momentum_warmup steps, from 0.85
    muon_momentum_warmup: int = 300
    muon_weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | wsd (warm-up, stable, linear decay over cooldown_frac)
    cooldown_frac: float = 0.4
    order: str = "random"  # random windows, or sequential non-overlapping epochs
    eval_every: int = 200
    eval_batches: int = 20
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 2  # checkpoints kept besides the best one
    sample_tokens: int = 100  # length of the text sample written at each evaluation
    seed: int = 1337
    dtype: str = "auto"  # auto: the fastest the device really supports (see train/precision.py)
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    data: str = ""  # token folder the run was trained on (filled in by `train`)

    def validate(self) -> None:
        """Raise UserError for values that cannot work."""
        if self.dtype not in DTYPES:
            raise UserError(f"train.dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if (value := getattr(self, name)) not in allowed:
                raise UserError(f"train.{name} must be one of {', '.join(allowed)}, not {value!r}")
        if not 0 < self.cooldown_frac <= 1:
            raise UserError(f"train.cooldown_frac must be in (0, 1], got {self.cooldown_frac}")
        if not 0 <= self.muon_momentum < 1 or self.muon_lr <= 0 or self.muon_weight_decay < 0:
            raise UserError(f"need train.muon_lr > 0, 0 <= train.muon_momentum < 1 and "
                            f"train.muon_weight_decay >= 0 (got {self.muon_lr}, {self.muon_momentum}, "
                            f"{self.muon_weight_decay})")
        if self.order not in ORDERS:
            raise UserError(f"train.order must be one of {', '.join(ORDERS)}, not {self.order!r}")
        for name in ("batch_size", "grad_accum", "eval_batches", "log_every", "eval_every", "ckpt_every",
                     "keep_last"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "max_tokens", "warmup_steps", "sample_tokens", "muon_momentum_warmup"):
            if getattr(self, name) < 0:
                raise UserError(f"train.{name} must not be negative, got {getattr(self, name)}")
        if self.max_minutes < 0:
            raise UserError(f"train.max_minutes must not be negative, got {self.max_minutes}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"train.seed must be in [0, 2**32), got {self.seed}")
        if self.embed_lr < 0:
            raise UserError(f"train.embed_lr must not be negative (0: train.lr), got {self.embed_lr}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise UserError(f"train.weight_decay and train.grad_clip must not be negative "
                            f"(got {self.weight_decay} and {self.grad_clip})")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise UserError(f"need 0 <= train.min_lr <= train.lr and lr > 0 "
                            f"(lr={self.lr}, min_lr={self.min_lr})")


# Training settings that suit each model preset (the model side comes from GPTConfig.preset).
TRAIN_PRESETS: dict[str, dict] = {
    # 2 CPU cores, a few minutes: learns Shakespeare visibly.
    "tiny": dict(batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=50, max_steps=2000, eval_every=100,
                 eval_batches=10, ckpt_every=200),
    # The original project's setup: 256 wide, 4 heads, 4 layers, context 512.
    "seed": dict(batch_size=8, lr=6e-4, min_lr=6e-5, warmup_steps=100, max_steps=5000),
    # GPT-2 small as in the paper and nanoGPT: ~0.5M tokens a step through accumulation.
    "gpt2-124m": dict(batch_size=16, grad_accum=32, lr=6e-4, min_lr=6e-5, warmup_steps=700,
                      max_steps=19073, eval_every=250, ckpt_every=1000),
    "gpt2-350m": dict(batch_size=8, grad_accum=64, lr=3e-4, min_lr=3e-5, warmup_steps=700,
                      max_steps=19073, eval_every=250, ckpt_every=1000),
    "modern-124m": dict(batch_size=16, grad_accum=32, lr=1.5e-3, min_lr=1.5e-4, warmup_steps=700,
                        max_steps=19073, eval_every=250, ckpt_every=1000),
}


@dataclass
class Config:
    """A whole run: `model` and `train`. `explicit` records the keys a user set (not saved)."""

    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    explicit: frozenset = field(default_factory=frozenset, repr=False, compare=False)

    @classmethod
    def preset(cls, name: str) -> Config:
        """The model preset `name` with training settings that suit it."""
        if name not in TRAIN_PRESETS:
            raise UserError(f"unknown preset {name!r}; choose one of {', '.join(TRAIN_PRESETS)}")
        return cls(model=GPTConfig.preset(name), train=TrainConfig(**TRAIN_PRESETS[name]))

    def to_dict(self) -> dict:
        """{'model': {...}, 'train': {...}} of plain values."""
        return {"model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}

    def to_toml(self) -> str:
        """The config as TOML text (two flat tables)."""
        lines = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
            lines.append("")
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        """Write `config.toml` atomically."""
        from scratchllm.util import atomic_write_bytes

        atomic_write_bytes(path, self.to_toml().encode())

    def update(self, values: dict, origin: str) -> Config:
        """Apply {'model': {...}, 'train': {...}} with type checks; `origin` names the source in errors."""
        model, train, explicit = self.model, self.train, set(self.explicit)
        for section, table in values.items():
            if section not in ("model", "train") or not isinstance(table, dict):
                raise UserError(f"{origin}: unknown section {section!r} (use [model] and [train])")
            target = model if section == "model" else train
            changes = {key: _coerce(target, section, key, value, origin) for key, value in table.items()}
            target = dataclasses.replace(target, **changes)
            explicit |= {f"{section}.{key}" for key in changes}
            model, train = (target, train) if section == "model" else (model, target)
        return Config(model=model, train=train, explicit=frozenset(explicit))

    def apply_sets(self, sets: list[str], sections: tuple[str, ...] = ("model", "train")) -> Config:
        """Apply `--set section.key=value` strings (only keys of `sections` are accepted)."""
        values: dict[str, dict] = {}
        for item in sets:
            key, eq, text = item.partition("=")
            section, dot, name = key.strip().partition(".")
            if not eq or not dot or not name:
                raise UserError(f"--set {item!r}: expected KEY=VALUE with KEY like train.lr or model.n_layer")
            if section in ("model", "train") and section not in sections:
                allowed = " and ".join(f"{s}.*" for s in sections)
                raise UserError(f"--set {item!r}: only {allowed} keys apply here")
            text = text.strip()
            target = {"model": self.model, "train": self.train}.get(section)
            is_str = target is not None and _field_types(target).get(name) is str
            values.setdefault(section, {})[name] = text.strip("'\"") if is_str else _parse_text(text)
        return self.update(values, "--set")


def load_toml(path: str | Path) -> dict:
    """Read a TOML file into a dict (UserError if missing or malformed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    try:
        return tomllib.loads(text) if tomllib else _read_flat_toml(text)
    except ValueError as e:  # tomllib.TOMLDecodeError is a ValueError
        raise UserError(f"{path}: not valid TOML: {e}") from None


def build_config(preset: str | None = None, config_file: str | Path | None = None,
                 sets: list[str] = ()) -> Config:
    """Preset (default tiny), then the TOML file, then the `--set` overrides; validated."""
    cfg = Config.preset(preset or "tiny")
    if config_file is not None:
        cfg = cfg.update(load_toml(config_file), str(config_file))
    cfg = cfg.apply_sets(list(sets))
    cfg.train.validate()
    return cfg


def load_run_config(path: str | Path) -> Config:
    """The config a run folder saved (exactly, no preset underneath)."""
    data = load_toml(path)
    cfg = Config().update(data, str(path))
    cfg.train.validate()
    return Config(model=cfg.model, train=cfg.train, explicit=frozenset())


# --- values -------------------------------------------------------------------------------------


def _field_types(obj) -> dict[str, type]:
    hints = typing.get_type_hints(type(obj))
    types = {}
    for f in dataclasses.fields(obj):
        t = hints.get(f.name, type(getattr(obj, f.name)))
        args = [a for a in typing.get_args(t) if a is not type(None)]  # Optional[X] -> X
        if typing.get_origin(t) is typing.Literal:
            t = type(args[0])
        elif args and typing.get_origin(t) is not None:
            t = args[0]
        types[f.name] = t
    return types


def _coerce(obj, section: str, key: str, value, origin: str):
    types = _field_types(obj)
    if key not in types:
        known = ", ".join(f"{section}.{k}" for k in types if k != "explicit")
        raise UserError(f"{origin}: unknown key {section}.{key} (known: {known})")
    want = types[key]
    ok = (
        (want is bool and isinstance(value, bool))
        or (want is int and isinstance(value, int) and not isinstance(value, bool))
        or (want is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (want is str and isinstance(value, str))
    )
    if not ok:
        raise UserError(f"{origin}: {section}.{key} must be {want.__name__}, got {value!r}")
    return float(value) if want is float else value


def _parse_text(text: str):
    """A --set value: true/false, an int, a float, else a string (quotes optional)."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text.replace("_", ""))
        except ValueError:
            pass
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return ("-inf" if value < 0 else "inf") if math.isinf(value) else "nan"
        return repr(value)  # shortest text that reads back to the same float
    if value is None:
        raise ValueError("TOML has no null; give the field a value")
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _read_flat_toml(text: str) -> dict:
    """The subset of TOML `to_toml` writes: [section] headers and `key = scalar` lines."""
    out: dict[str, dict] = {}
    table = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            table = out.setdefault(line[1:-1].strip(), {})
            continue
        key, eq, value = line.partition("=")
        if not eq or table is None:
            raise ValueError(f"line {n}: expected key = value inside a [table]")
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            parsed = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        else:
            parsed = _parse_text(value)
            if isinstance(parsed, str) and parsed not in ("inf", "-inf", "nan"):
                raise ValueError(f"line {n}: cannot read value {value!r}")
            if isinstance(parsed, str):
                parsed = float(parsed)
        table[key.strip()] = parsed
    return out
