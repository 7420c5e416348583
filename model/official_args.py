"""The options of the official `train_ddgan.py` / `test_ddgan.py` (NVlabs, ddgan-spec §2.1), read as they read them.

`ddgan convert --official-args KEY=VALUE ...` and `--official-args-file` (a JSON object, e.g. a saved Namespace)
give options by their official names. Each value is read by the type the official argparse gives the option:
`type=int` / `type=float` / a plain string, a presence flag (`action='store_true'`/`'store_false'`: true/false
here), or a list of integers. `ch_mult` is `nargs='+', type=int` there, so `ch_mult=1 2 2 2` (separate words),
`1,2,2,2`, `[1,2,2,2]` and a single `16` all read as lists; `attn_resolutions` and `fir_kernel` are lists by
their defaults (`(16,)`, `[1, 3, 3, 1]`) and are read the same way. An unknown name is an error naming the
closest official one, so a misspelt option is never silently ignored.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

OptionKind = Literal["int", "float", "str", "flag", "ints"]

# Every option of the official scripts (train_ddgan.py and test_ddgan.py at commit 6818ded), plus the three
# attributes train_ddgan.py adds to its Namespace before pickling it into content.pth.
OFFICIAL_OPTIONS: dict[str, OptionKind] = {
    # generator and diffusion
    "image_size": "int",
    "num_channels": "int",
    "centered": "flag",
    "use_geometric": "flag",
    "beta_min": "float",
    "beta_max": "float",
    "num_channels_dae": "int",
    "n_mlp": "int",
    "ch_mult": "ints",
    "num_res_blocks": "int",
    "attn_resolutions": "ints",
    "dropout": "float",
    "resamp_with_conv": "flag",
    "conditional": "flag",
    "fir": "flag",
    "fir_kernel": "ints",
    "skip_rescale": "flag",
    "resblock_type": "str",
    "progressive": "str",
    "progressive_input": "str",
    "progressive_combine": "str",
    "embedding_type": "str",
    "fourier_scale": "float",
    "not_use_tanh": "flag",
    "nz": "int",
    "num_timesteps": "int",
    "z_emb_dim": "int",
    "t_emb_dim": "int",
    # training, sampling and the process layout: accepted, not needed for the generator
    "seed": "int",
    "resume": "flag",
    "exp": "str",
    "dataset": "str",
    "batch_size": "int",
    "num_epoch": "int",
    "ngf": "int",
    "lr_g": "float",
    "lr_d": "float",
    "beta1": "float",
    "beta2": "float",
    "no_lr_decay": "flag",
    "use_ema": "flag",
    "ema_decay": "float",
    "r1_gamma": "float",
    "lazy_reg": "int",
    "save_content": "flag",
    "save_content_every": "int",
    "save_ckpt_every": "int",
    "num_proc_node": "int",
    "num_process_per_node": "int",
    "node_rank": "int",
    "local_rank": "int",
    "master_address": "str",
    "compute_fid": "flag",
    "epoch_id": "int",
    "real_img_dir": "str",
    "world_size": "int",
    "global_rank": "int",
}
_NULLABLE = frozenset({"lazy_reg"})  # default None in train_ddgan.py
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})
_LIST_SEPARATORS = re.compile(r"[\s,]+")


class OfficialArgsError(ValueError):
    """An official option that is unknown or whose value does not read as the official type."""


def check_name(name: str) -> OptionKind:
    """The kind of an official option; OfficialArgsError naming the closest known name for an unknown one."""
    kind = OFFICIAL_OPTIONS.get(name)
    if kind is not None:
        return kind
    close = difflib.get_close_matches(name, OFFICIAL_OPTIONS, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "it is not an option of train_ddgan.py or test_ddgan.py"
    raise OfficialArgsError(f"unknown official option {name!r}: {hint}")


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise OfficialArgsError(f"official option {name}: expected an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise OfficialArgsError(f"official option {name}: expected an integer, got {value!r}") from None


def _ints(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        items: Iterable[Any] = [part for part in _LIST_SEPARATORS.split(text) if part]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        items = [value]  # a single number, as `--attn_resolutions 16` gives one
    try:
        return tuple(_int(name, item) for item in items)
    except OfficialArgsError:
        raise OfficialArgsError(
            f"official option {name}: expected integers (one, or a list such as 1,2,2,2), got {value!r}"
        ) from None


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise OfficialArgsError(f"official option {name}: expected true or false, got {value!r}")


def parse_value(name: str, value: Any) -> Any:
    """`value` (a command-line string, or a JSON / Namespace value) read as the official option `name`."""
    kind = check_name(name)
    if value is None and name in _NULLABLE:
        return None
    if kind == "int":
        return _int(name, value)
    if kind == "ints":
        return _ints(name, value)
    if kind == "flag":
        return _flag(name, value)
    if kind == "float":
        if isinstance(value, bool):
            raise OfficialArgsError(f"official option {name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise OfficialArgsError(f"official option {name}: expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise OfficialArgsError(f"official option {name}: expected a string, got {value!r}")
    return value


def parse_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every option read as its official type (names checked)."""
    return {name: parse_value(name, value) for name, value in values.items()}


def parse_assignments(items: Iterable[str], flag: str = "--official-args") -> dict[str, str]:
    """`KEY=VALUE` words as the shell splits them; words without `=` after a list option extend its value.

    So `ch_mult=1 2 2 2` (four words, as `--ch_mult 1 2 2 2` gives the official nargs='+') reads like
    `ch_mult=1,2,2,2`. Values stay text; `parse_options` reads them.
    """
    values: dict[str, str] = {}
    last: str | None = None
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            if last is not None and OFFICIAL_OPTIONS.get(last) == "ints":
                values[last] = f"{values[last]},{item}"
                continue
            raise OfficialArgsError(f"{flag} expects KEY=VALUE, got {item!r}")
        key = key.strip().lstrip("-")
        if not key:
            raise OfficialArgsError(f"{flag} expects KEY=VALUE, got {item!r}")
        check_name(key)
        values[key], last = text, key
    return values
