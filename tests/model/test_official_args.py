"""Official train_ddgan.py options read by their official types: lists as one value or many, unknown names named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ddgan.cli
from ddgan.model.checkpoint import load_config
from ddgan.model.config import ConfigError, from_official_args, get_preset
from ddgan.model.official_args import OfficialArgsError, parse_assignments, parse_options
from tests.model.conftest import TINY_CONFIG


def _read(*words: str) -> dict[str, object]:
    return parse_options(parse_assignments(words))


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (("attn_resolutions=16",), (16,)),  # the crash of issue 13: a single value is a one-item list
        (("attn_resolutions=16,8",), (16, 8)),
        (("attn_resolutions=[16, 8]",), (16, 8)),
        (("attn_resolutions=(16,)",), (16,)),
        (("attn_resolutions=16", "8"), (16, 8)),  # nargs='+' words, as `--attn_resolutions 16 8`
        (("attn_resolutions=",), ()),
    ],
)
def test_list_options_read_one_value_or_many(words: tuple[str, ...], expected: tuple[int, ...]) -> None:
    assert _read(*words)["attn_resolutions"] == expected


def test_each_option_gets_its_official_type() -> None:
    values = _read("ch_mult=1", "2", "2", "2", "nz=100", "dropout=0.1", "not_use_tanh=true", "fir=False",
                   "dataset=cifar10", "lazy_reg=15", "fir_kernel=1,3,3,1")  # fmt: skip
    assert values == {
        "ch_mult": (1, 2, 2, 2),
        "nz": 100,
        "dropout": 0.1,
        "not_use_tanh": True,
        "fir": False,
        "dataset": "cifar10",
        "lazy_reg": 15,
        "fir_kernel": (1, 3, 3, 1),
    }
    # JSON values (an --official-args-file, a saved Namespace) read the same way
    assert parse_options({"ch_mult": [1, 2], "attn_resolutions": 16, "nz": 100.0, "lazy_reg": None}) == {
        "ch_mult": (1, 2),
        "attn_resolutions": (16,),
        "nz": 100,
        "lazy_reg": None,
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"attn_resolution": "16"}, "unknown official option 'attn_resolution': did you mean 'attn_resolutions'?"),
        ({"num_channel_dae": "64"}, "did you mean 'num_channels_dae'?"),
        ({"quux": "1"}, "unknown official option 'quux': it is not an option of train_ddgan.py or test_ddgan.py"),
        ({"ch_mult": "1,two"}, "ch_mult: expected integers (one, or a list such as 1,2,2,2), got '1,two'"),
        ({"nz": "1.5"}, "nz: expected an integer, got '1.5'"),
        ({"nz": True}, "nz: expected an integer, got True"),
        ({"fir": "maybe"}, "fir: expected true or false, got 'maybe'"),
        ({"beta_min": "x"}, "beta_min: expected a number"),
    ],
)
def test_bad_names_and_values_are_named(values: dict[str, object], message: str) -> None:
    with pytest.raises(OfficialArgsError) as info:
        parse_options(values)
    assert message in str(info.value)


def test_words_without_a_key_only_extend_a_list_option() -> None:
    with pytest.raises(OfficialArgsError, match="expects KEY=VALUE, got '4'"):
        parse_assignments(["nz=100", "4"])
    with pytest.raises(OfficialArgsError, match="did you mean 'ch_mult'"):
        parse_assignments(["ch_mul=1,2"])


def test_the_cifar10_command_line_gives_the_cifar10_preset() -> None:
    # the flags of the official README's CIFAR-10 test command, as KEY=VALUE words
    words = ("dataset=cifar10", "num_channels=3", "num_channels_dae=128", "num_timesteps=4", "num_res_blocks=2",
             "nz=100", "z_emb_dim=256", "n_mlp=4", "ch_mult=1", "2", "2", "2", "epoch_id=1200",
             "attn_resolutions=16")  # fmt: skip
    config = from_official_args(parse_assignments(words), preset="cifar10")
    expected = get_preset("cifar10")
    assert config.generator == expected.generator and config.diffusion == expected.diffusion
    with pytest.raises(ConfigError, match="did you mean 'num_timesteps'"):
        from_official_args({"ch_mult": "1,2", "num_timestep": "4"})


def test_convert_reads_a_single_attention_resolution_and_names_a_misspelt_option(
    tmp_path: Path, tiny_state_dict: dict[str, torch.Tensor], capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "netG_50.pth"
    torch.save({"module." + k: v for k, v in tiny_state_dict.items()}, source)
    words = ["num_channels_dae=8", "ch_mult=1", "2", "num_res_blocks=1", "image_size=16", "nz=4", "z_emb_dim=8",
             "n_mlp=1", "attn_resolutions=8"]  # fmt: skip
    argv = ["convert", str(source), "-o", str(tmp_path / "m"), "--official-args", *words]
    assert ddgan.cli.main(argv) == 0  # before: "'int' object is not iterable"
    assert load_config(tmp_path / "m").generator == TINY_CONFIG.generator
    capsys.readouterr()
    argv = ["convert", str(source), "-o", str(tmp_path / "n"), "--official-args", *words, "attn_resolution=8"]
    assert ddgan.cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == "ddgan convert: error: unknown official option 'attn_resolution': did you mean 'attn_resolutions'?\n"
