"""The run config: presets, TOML round trip, `--set` overrides with type checks."""

from pathlib import Path

import pytest

from scratchllm import config as C
from scratchllm.config import Config, TrainConfig, build_config, load_run_config
from scratchllm.model.gpt import GPTConfig
from scratchllm.util import UserError

tomllib = pytest.importorskip("tomllib")  # Python 3.11+: the reference reader


def test_preset_combines_model_and_training_settings():
    cfg = Config.preset("tiny")
    assert cfg.model == GPTConfig.preset("tiny")
    assert cfg.train.lr == C.TRAIN_PRESETS["tiny"]["lr"]
    assert Config.preset("gpt2-124m").train.grad_accum == 32
    with pytest.raises(UserError, match="unknown preset"):
        Config.preset("gpt5")


def test_toml_round_trip_is_exact(tmp_path):
    cfg = build_config("modern-124m", sets=["train.lr=3.3e-4", "train.device=cuda:1", "model.dropout=0.1"])
    path = tmp_path / "config.toml"
    cfg.save(path)
    back = load_run_config(path)
    assert back == cfg
    assert tomllib.loads(path.read_text()) == cfg.to_dict()  # a standard reader agrees


def test_python310_reader_agrees_with_tomllib():
    text = build_config("seed", sets=['train.data=C:\\data\\"x"', "train.max_minutes=1.5"]).to_toml()
    assert C._read_flat_toml(text) == tomllib.loads(text)


def test_sets_parse_by_field_type():
    cfg = build_config("tiny", sets=["model.n_layer=2", "train.lr=1e-3", "train.compile=true",
                                     "train.max_minutes=2", "train.device=cpu", "model.bias=false"])
    assert (cfg.model.n_layer, cfg.train.lr, cfg.train.compile) == (2, 1e-3, True)
    assert isinstance(cfg.train.max_minutes, float) and cfg.model.bias is False
    assert {"model.n_layer", "train.lr", "model.bias"} <= cfg.explicit


@pytest.mark.parametrize("item, message", [
    ("train.lrr=1", "unknown key train.lrr"),
    ("optim.lr=1", "unknown section"),
    ("model.n_layer=2.5", "model.n_layer must be int"),
    ("model.n_layer=true", "model.n_layer must be int"),
    ("train.compile=1", "train.compile must be bool"),
    ("train.lr=fast", "train.lr must be float"),
    ("lr=1", "expected KEY=VALUE"),
    ("train.dtype=fp8", "train.dtype must be one of"),
    ("train.batch_size=0", "train.batch_size must be at least 1"),
    ("model.norm=batchnorm", "model.norm must be one of"),
    ("train.beta2=1.5", "train.beta2 must be in"),
    ("train.beta1=-0.1", "train.beta1 must be in"),
    ("train.seed=-1", "train.seed must be in"),
    ("train.seed=5000000000", "train.seed must be in"),
    ("train.max_minutes=-5", "train.max_minutes must not be negative"),
    ("train.grad_clip=-1", "must not be negative"),
])
def test_bad_overrides_are_user_errors(item, message):
    with pytest.raises(UserError, match=message):
        build_config("tiny", sets=[item])


def test_toml_file_layers_over_preset_and_is_checked(tmp_path):
    good = tmp_path / "a.toml"
    good.write_text("[model]\nn_layer = 3\n[train]\nlr = 5e-4\nwarmup_steps = 7\n")
    cfg = build_config("tiny", good, sets=["train.warmup_steps=9"])
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.train.lr, cfg.train.warmup_steps) == (3, 256, 5e-4, 9)
    bad = tmp_path / "b.toml"
    bad.write_text("[train]\nlr = '3e-4'\n")
    with pytest.raises(UserError, match="train.lr must be float"):
        build_config("tiny", bad)
    broken = tmp_path / "c.toml"
    broken.write_text("[train\nlr = 1\n")
    with pytest.raises(UserError, match="not valid TOML"):
        build_config("tiny", broken)
    with pytest.raises(UserError, match="no such config file"):
        build_config("tiny", tmp_path / "missing.toml")


def test_train_config_defaults_validate():
    TrainConfig().validate()
    with pytest.raises(UserError, match="min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3).validate()


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_both_readers_agree(path):
    cfg = build_config(None, path)  # every key known, every value valid
    text = path.read_text()
    assert C._read_flat_toml(text) == tomllib.loads(text)
    assert cfg.explicit >= {f"{section}.{key}" for section, keys in tomllib.loads(text).items()
                            for key in keys}


def test_gpt2_fineweb_config_is_half_a_million_tokens_a_step_for_10b_tokens():
    cfg = build_config(None, CONFIG_DIR / "gpt2-124m-fineweb.toml")
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size * cfg.train.grad_accum
    assert tokens_per_step == 2**19
    assert abs(cfg.train.max_steps * tokens_per_step - 10e9) < tokens_per_step
    assert cfg.model.padded_vocab_size == 50304 and cfg.train.compile
