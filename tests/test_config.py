"""The run config: presets, TOML round trip, `--set` overrides with type checks, the shipped configs."""

import importlib.util
import re
from pathlib import Path

import pytest

from scratchllm import config as C
from scratchllm.config import Config, TrainConfig, build_config, load_run_config
from scratchllm.model.gpt import GPTConfig
from scratchllm.util.errors import UserError

tomllib = pytest.importorskip("tomllib")  # Python 3.11+: the reference reader


def test_preset_combines_model_and_training_settings():
    cfg = Config.preset("tiny")
    assert cfg.model == GPTConfig.preset("tiny")
    assert cfg.train.lr == C.PRESETS["tiny"].train.lr == 2e-3
    assert Config.preset("gpt2-124m").train.grad_accum == 32
    with pytest.raises(UserError, match="unknown preset"):
        Config.preset("gpt5")
    cfg.train.lr = 1.0  # a copy: the registry is unchanged
    assert Config.preset("tiny").train.lr == 2e-3


def test_a_runs_vocabulary_is_the_datas_unless_named():
    assert GPTConfig.preset("tiny").vocab_size == 50257  # a model alone: GPT-2's vocabulary
    assert build_config("tiny").model.vocab_size == 0  # 0: taken from the token folder
    assert build_config("tiny", sets=["model.vocab_size=4096"]).model.vocab_size == 4096
    from scratchllm.model.gpt import GPT

    with pytest.raises(UserError, match="vocab_size is 0"):
        GPT(build_config("tiny").model)


def test_toml_round_trip_is_exact(tmp_path):
    cfg = build_config("modern-124m", sets=["train.lr=3.3e-4", "train.device=cuda:1", "model.dropout=0.1"])
    path = tmp_path / "config.toml"
    cfg.save(path)
    back = load_run_config(path)
    assert back == cfg
    assert tomllib.loads(path.read_text()) == cfg.to_dict()  # a standard reader agrees


def test_strings_with_quotes_and_backslashes_round_trip(tmp_path):
    cfg = build_config("seed", sets=['train.data=C:\\data\\"x"', "train.max_minutes=1.5"])
    assert '\\' in cfg.train.data and '"' in cfg.train.data
    cfg.save(tmp_path / "config.toml")
    assert load_run_config(tmp_path / "config.toml") == cfg


def test_sets_parse_by_field_type():
    cfg = build_config("tiny", sets=["model.n_layer=2", "train.lr=1e-3", "train.compile=true",
                                     "train.max_minutes=2", "train.device=cpu", "model.bias=false"])
    assert (cfg.model.n_layer, cfg.train.lr, cfg.train.compile) == (2, 1e-3, True)
    assert isinstance(cfg.train.max_minutes, float) and cfg.model.bias is False


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
def test_shipped_configs_load_and_every_key_lands(path):
    cfg = build_config(None, path)  # every key known, every value valid
    values = cfg.to_dict()
    for section, keys in tomllib.loads(path.read_text()).items():
        assert {k: values[section][k] for k in keys} == keys


def _configs_build():
    spec = importlib.util.spec_from_file_location("configs_build", CONFIG_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_configs_are_their_presets_as_configs_build_writes_them():
    build = _configs_build()
    assert sorted(build.RECIPES) == [p.name for p in CONFIGS]
    for name, (preset, sets, _) in build.RECIPES.items():
        assert (CONFIG_DIR / name).read_text() == build.render(name), f"run python configs/build.py ({name})"
        assert build_config(None, CONFIG_DIR / name) == build_config(preset, sets=sets)


def test_cli_help_lists_the_registrys_presets():
    from scratchllm.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    help_text = train.format_help()
    assert all(name in help_text for name in C.PRESETS)


def test_gpt2_fineweb_config_is_half_a_million_tokens_a_step_for_10b_tokens():
    cfg = build_config(None, CONFIG_DIR / "gpt2-124m-fineweb.toml")
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size * cfg.train.grad_accum
    assert tokens_per_step == 2**19
    assert abs(cfg.train.max_steps * tokens_per_step - 10e9) < tokens_per_step
    assert cfg.model.padded_vocab_size == 50304 and cfg.train.compile


def _float_keys():
    """Every float setting, as section.key."""
    from dataclasses import fields

    cfg = Config()
    return [f"{section}.{f.name}" for section, obj in (("model", cfg.model), ("train", cfg.train))
            for f in fields(obj) if isinstance(getattr(obj, f.name), float)]


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e400"])
def test_every_float_setting_refuses_non_finite_numbers(key, text):
    with pytest.raises(UserError, match=rf"^{re.escape(key)} must be a finite number, got (-?inf|nan)"):
        build_config(sets=[f"{key}={text}"])


def test_non_finite_numbers_in_a_toml_file_are_refused(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[train]\ngrad_clip = nan\n")
    with pytest.raises(UserError, match="train.grad_clip must be a finite number, got nan"):
        build_config(config_file=path)
