"""One typed configuration for a run: the model (`GPTConfig`), the training (`TrainConfig`), the presets.

A config is built in layers: a preset from `PRESETS`, then a TOML file, then `--set section.key=value`
overrides. Every layer is type checked against the dataclass fields, so a typo or a wrong-typed value
is an error the user sees at once instead of a setting that silently does nothing. A run folder
keeps the final config as `config.toml`, which is everything needed to rebuild the model and continue.

`model.vocab_size = 0` means "the data's": training takes it from the token folder's meta.json.
This module imports neither torch nor the model code, so the command line can show the presets in
its help at once.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from scratchllm.util.errors import UserError
from scratchllm.util.files import atomic_write_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, published separately before it joined the standard library
    import tomli as tomllib

MODEL_CHOICES = {"norm": ("layernorm", "rmsnorm"), "pos": ("learned", "sinusoidal", "rope"),
                 "mlp": ("gelu", "swiglu", "relu2")}
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: see runtime/precision.py
ORDERS = ("random", "sequential")
OPTIMIZERS = ("adamw", "muon")  # see train/optim.py
SCHEDULES = ("cosine", "wsd")
DEFAULT_PRESET = "tiny"


@dataclass
class GPTConfig:
    """Shape and options of a GPT; the defaults are GPT-2 small (124M)."""

    vocab_size: int = 50257  # 0 in a run's config: the token folder's vocabulary
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"
    pos: str = "learned"
    mlp: str = "gelu"
    qk_norm: bool = False
    embed_norm: bool = False  # RMS-normalise the first block's input (no learned gain), as nanochat does
    tie_embeddings: bool = True
    pad_vocab_multiple: int = 1  # the embedding and head get a multiple of this many rows
    zero_init_proj: bool = False  # residual branches' output projections (and an untied head) start at 0
    logit_softcap: float = 0.0  # logits -> c * tanh(logits / c); 0 turns it off
    unet_skips: bool = False  # layer i's output also feeds layer n_layer-1-i, through a learned weight

    def __post_init__(self):
        _check_finite(self, "model")
        for name, allowed in MODEL_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"model.{name} must be one of {', '.join(allowed)}, "
                                f"not {getattr(self, name)!r}")
        if int(self.vocab_size) < 0:
            raise UserError("model.vocab_size must be a positive integer, or 0 for the data's")
        for name in ("block_size", "n_layer", "n_head", "n_embd", "pad_vocab_multiple"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"model.{name} must be a positive integer")
        if self.n_embd % self.n_head:
            raise UserError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:  # rotates pairs within each head
            raise UserError(f"pos=rope needs an even head size, not {self.n_embd // self.n_head}")
        if self.pos == "sinusoidal" and self.n_embd % 2:  # sine and cosine pairs across the embedding
            raise UserError(f"pos=sinusoidal needs an even n_embd, not {self.n_embd}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model.dropout must be in [0, 1), not {self.dropout}")
        if not 0.0 <= self.logit_softcap < float("inf"):
            raise UserError(f"model.logit_softcap must be 0 (off) or positive, not {self.logit_softcap}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and the head: vocab_size rounded up to pad_vocab_multiple."""
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """The model of `PRESETS[name]` (tiny, seed, gpt2-124m, ...) with fields overridden."""
        if name not in PRESETS:
            raise UserError(f"unknown model preset {name!r}: choose from {', '.join(PRESETS)}")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"unknown model field(s): {', '.join(unknown)}")
        return replace(PRESETS[name].model, **overrides)


@dataclass
class TrainConfig:
    """Everything about how the model is trained; sizes count sequences, steps count optimizer steps."""

    batch_size: int = 16  # sequences per micro-batch (per rank)
    grad_accum: int = 1  # micro-batches per optimizer step (per rank)
    max_steps: int = 2000
    max_tokens: int = 0  # stop after this many training tokens (0: no token budget)
    max_minutes: float = 0.0  # stop after this much wall time of one invocation (0: no time budget)
    lr: float = 1e-3
    min_lr: float = 1e-4  # the schedule (cosine or wsd) decays to this at max_steps
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
    align: bool = False  # random windows start at a document's first token where one begins within reach
    eval_every: int = 200
    eval_batches: int = 20
    eval_tasks: list[str] = field(default_factory=list)  # downstream tasks: hellaswag, bigbench:NAME, core
    task_every: int = 0  # steps between task evaluations (0: only at the end of the run)
    task_limit: int = 0  # items scored per task, a fixed sample (0: all of them)
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 2  # checkpoints kept besides the best one
    sample_tokens: int = 100  # length of the text sample written at each evaluation
    seed: int = 1337
    dtype: str = "auto"  # auto: the fastest the device really supports (see runtime/precision.py)
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    data: str = ""  # token folder the run was trained on (filled in by `train`), or `sft`'s source
    init: str = ""  # the run, export or transformers folder the weights started from (`--init`)
    val_conversations: int = 200  # sft: source conversations held out for the validation loss

    def eval_due(self, step: int) -> bool:
        """Whether the validation loss is measured after optimizer step `step`: every eval_every steps and
        at max_steps. Training asks here, and so does a resume cutting the log back, so they agree."""
        return step % self.eval_every == 0 or step >= self.max_steps

    def tasks_due(self, step: int) -> bool:
        """Whether the downstream tasks (eval_tasks) are scored after `step`: every task_every steps (0:
        none between) and at max_steps."""
        return bool(self.task_every) and step % self.task_every == 0 or step >= self.max_steps

    def validate(self) -> None:
        """Raise UserError for values that cannot work."""
        _check_finite(self, "train")
        for name, allowed in (("dtype", DTYPES), ("order", ORDERS), ("optimizer", OPTIMIZERS),
                              ("schedule", SCHEDULES)):
            if (value := getattr(self, name)) not in allowed:
                raise UserError(f"train.{name} must be one of {', '.join(allowed)}, not {value!r}")
        for names, low, rule in _TRAIN_BOUNDS:
            for name in names:
                if (value := getattr(self, name)) < low:
                    raise UserError(f"train.{name} must {rule}, got {value}")
        for name in ("beta1", "beta2", "muon_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"train.seed must be in [0, 2**32), got {self.seed}")
        if self.align and self.order != "random":
            raise UserError("train.align moves random windows to document starts: it needs "
                            "train.order=random")
        if not 0 < self.cooldown_frac <= 1:
            raise UserError(f"train.cooldown_frac must be in (0, 1], got {self.cooldown_frac}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr and self.muon_lr > 0):
            raise UserError(f"need 0 <= train.min_lr <= train.lr and lr, muon_lr > 0 "
                            f"(lr={self.lr}, min_lr={self.min_lr}, muon_lr={self.muon_lr})")


def _check_finite(obj, section: str) -> None:
    """UserError for a float setting that is infinite or NaN (TOML and --set can write both)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            beyond = " (a number beyond 1.8e308 reads as inf)" if math.isinf(value) else ""
            raise UserError(f"{section}.{f.name} must be a finite number, got {value}{beyond}")


# (fields, smallest allowed value, what the error says) for TrainConfig.validate
_TRAIN_BOUNDS = [
    (("batch_size", "grad_accum", "eval_batches", "log_every", "eval_every", "ckpt_every", "keep_last"), 1,
     "be at least 1"),
    (("max_steps", "max_tokens", "warmup_steps", "sample_tokens", "muon_momentum_warmup", "max_minutes",
      "task_every", "task_limit",
      "weight_decay", "grad_clip", "embed_lr", "muon_weight_decay"), 0, "not be negative"),
]


@dataclass
class Config:
    """A whole run: `model` and `train`."""

    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def preset(cls, name: str) -> Config:
        """A copy of `PRESETS[name]`: a model shape with training settings that suit it."""
        if name not in PRESETS:
            raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(model=replace(PRESETS[name].model), train=replace(PRESETS[name].train))

    def to_dict(self) -> dict:
        """{'model': {...}, 'train': {...}} of plain values."""
        return {"model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}

    def to_toml(self) -> str:
        """The config as TOML text (two flat tables)."""
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> None:
        """Write `config.toml` atomically."""
        atomic_write_bytes(path, self.to_toml().encode())

    def update(self, values: dict, origin: str) -> Config:
        """Apply {'model': {...}, 'train': {...}} with type checks; `origin` names the source in errors."""
        parts: dict[str, Any] = {"model": self.model, "train": self.train}
        for section, table in values.items():
            if section not in parts or not isinstance(table, dict):
                raise UserError(f"{origin}: unknown section {section!r} (use [model] and [train])")
            target = parts[section]
            parts[section] = replace(target, **{key: _coerce(target, section, key, value, origin)
                                                for key, value in table.items()})
        return Config(**parts)

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
            kind = _field_types(target).get(name) if target is not None else None
            if kind is list:  # a,b,c (brackets and quotes optional): train.eval_tasks=hellaswag,core
                value: Any = [v.strip().strip("'\"") for v in text.strip("[]").split(",") if v.strip()]
            else:
                value = text.strip("'\"") if kind is str else _parse_text(text)
            values.setdefault(section, {})[name] = value
        return self.update(values, "--set")




def _modern(**shape: Any) -> GPTConfig:
    """A GPTConfig with the model choices of the speedruns, shared by the modern presets: nanochat's
    model, so that transformers' NanoChatForCausalLM computes it exactly (model/hf.py)."""
    choices: dict[str, Any] = dict(pos="rope", norm="rmsnorm", qk_norm=True, mlp="relu2", bias=False,
                                   embed_norm=True, tie_embeddings=False, zero_init_proj=True,
                                   logit_softcap=30.0, pad_vocab_multiple=64)
    return GPTConfig(**{**choices, **shape})


PRESETS: dict[str, Config] = {
    # A few million parameters: trains usefully in minutes on a laptop CPU (learns Shakespeare visibly).
    "tiny": Config(GPTConfig(block_size=256, n_layer=4, n_head=4, n_embd=256, pad_vocab_multiple=64),
                   TrainConfig(batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=50, max_steps=2000,
                               eval_every=100, eval_batches=10, ckpt_every=200)),
    # The original project's model and setup: 256 wide, 4 heads, 4 layers, context 512.
    "seed": Config(GPTConfig(block_size=512, n_layer=4, n_head=4, n_embd=256, dropout=0.1),
                   TrainConfig(batch_size=8, lr=6e-4, min_lr=6e-5, warmup_steps=100, max_steps=5000)),
    # GPT-2 small as in the paper and nanoGPT: ~0.5M tokens a step through accumulation.
    "gpt2-124m": Config(GPTConfig(),
                        TrainConfig(batch_size=16, grad_accum=32, lr=6e-4, min_lr=6e-5, warmup_steps=700,
                                    max_steps=19073, eval_every=250, ckpt_every=1000)),
    "gpt2-350m": Config(GPTConfig(n_layer=24, n_head=16, n_embd=1024),
                        TrainConfig(batch_size=8, grad_accum=64, lr=3e-4, min_lr=3e-5, warmup_steps=700,
                                    max_steps=19073, eval_every=250, ckpt_every=1000)),
    # The speedruns' recipe (modded-nanogpt, nanochat) on tiny's shape, tuned on 2 CPU cores
    # (benchmarks/speedrun.py): RoPE, RMSNorm, QK-norm, ReLU², an RMS norm on the embedding, no biases, an
    # untied head, zero-initialised projections; Muon for the blocks' matrices, AdamW with a high rate for
    # the embeddings, warm-up-stable-decay with the decay over the last 60% (400 steps at this shape: 1.977
    # bits/byte against 1.984 for 40%; Muon 0.03 or 0.04, AdamW 6e-3 and min_lr 0 did no better). No
    # logit soft-cap: on a CPU its tanh over every logit cost a quarter of the step for no measurable
    # gain at this size. The embedding norm took the place of U-net skips, which no transformers class
    # computes: raced in one process (3 layers, 192 wide, 300 steps, the same batches) the two made 2.026
    # against 2.028 bits/byte on Shakespeare and 1.495 against 1.496 on the Python docs, less than the
    # 0.004 by which float-level changes alone (float32 RoPE tables, QK-norm's epsilon) moved the old
    # recipe. The demo trains this, or a smaller shape.
    "tiny-modern": Config(_modern(block_size=256, n_layer=4, n_head=4, n_embd=256, logit_softcap=0.0),
                          TrainConfig(batch_size=16, optimizer="muon", muon_lr=0.02, lr=3e-3, min_lr=3e-4,
                                      embed_lr=0.1, schedule="wsd", cooldown_frac=0.6, warmup_steps=0,
                                      max_steps=2000, eval_every=100, eval_batches=10, ckpt_every=200)),
    # GPT-2 small's shape with the same recipe; the learning rates are nanochat's for this width at
    # ~0.5M-token steps (Muon 0.02, embeddings 0.2, head 0.004), decayed to 0 over the last 40%.
    "modern-124m": Config(_modern(logit_softcap=15.0),
                          TrainConfig(batch_size=16, grad_accum=32, optimizer="muon", muon_lr=0.02, lr=4e-3,
                                      min_lr=0.0, embed_lr=0.2, schedule="wsd", cooldown_frac=0.4,
                                      warmup_steps=0, max_steps=19073, eval_every=250, ckpt_every=1000)),
}


def load_toml(path: str | Path) -> dict:
    """Read a TOML file into a dict (UserError if missing or malformed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None


def build_config(preset: str | None = None, config_file: str | Path | None = None,
                 sets: typing.Sequence[str] = ()) -> Config:
    """Preset (default tiny), then the TOML file, then the `--set` overrides; validated.

    A preset's vocab_size is only a placeholder for building its model alone: a run's vocabulary is
    its data's (0) unless the file or a `--set` names one.
    """
    cfg = Config.preset(preset or DEFAULT_PRESET)
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=0))
    if config_file is not None:
        cfg = cfg.update(load_toml(config_file), str(config_file))
    cfg = cfg.apply_sets(list(sets))
    cfg.train.validate()
    return cfg


def load_run_config(path: str | Path) -> Config:
    """The config a run folder saved (exactly, no preset underneath)."""
    cfg = Config().update(load_toml(path), str(path))
    cfg.train.validate()
    return cfg


# --- values -------------------------------------------------------------------------------------


def _field_types(obj) -> dict[str, type]:
    hints = typing.get_type_hints(type(obj))
    types = {}
    for f in dataclasses.fields(obj):
        t = hints.get(f.name, type(getattr(obj, f.name)))
        args = [a for a in typing.get_args(t) if a is not type(None)]  # Optional[X] -> X
        if typing.get_origin(t) is typing.Literal:
            t = type(args[0])
        elif typing.get_origin(t) is list:  # list[str]: the only kind of list a setting holds
            t = list
        elif args and typing.get_origin(t) is not None:
            t = args[0]
        types[f.name] = t
    return types


def _coerce(obj, section: str, key: str, value, origin: str):
    types = _field_types(obj)
    if key not in types:
        known = ", ".join(f"{section}.{k}" for k in types)
        raise UserError(f"{origin}: unknown key {section}.{key} (known: {known})")
    want = types[key]
    ok = (
        (want is bool and isinstance(value, bool))
        or (want is int and isinstance(value, int) and not isinstance(value, bool))
        or (want is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (want is str and isinstance(value, str))
        or (want is list and isinstance(value, list) and all(isinstance(v, str) for v in value))
    )
    if not ok:
        kind = "a list of strings" if want is list else want.__name__
        raise UserError(f"{origin}: {section}.{key} must be {kind}, got {value!r}")
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
