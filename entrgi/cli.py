"""The commands' Hydra entry point: `hydra.main` on the packaged configs, with composition errors as one line.

A command line Hydra cannot compose — an unknown option of a group (`guidance=nope`,
`experiment=tinny`), an unknown key (`sampler.nope=1`), a value of the wrong type or outside a
field's `StrEnum` (`model.decode=nope`), an override it cannot parse — is a mistake the user can
fix, so it ends like every other one: one stderr line naming the override and what is allowed,

    entrgi: error: guidance=nope: no such option; the options are aps, entrgi, none, soft

and exit code 2, instead of Hydra's report over several lines and exit code 1.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import hydra
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException, SearchPathException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

import entrgi.config  # noqa: F401  (the packaged configs extend its schemas and use its resolvers)

CONFIG_MODULE = "entrgi.conf"
# Hydra raises instead of printing and exiting 1 when this is "1" (hydra._internal.utils.run_and_report).
_FULL_ERROR = "HYDRA_FULL_ERROR"
# What Hydra raises for a command line it cannot compose (the config is built before the job runs).
_COMPOSITION_ERRORS = (ConfigCompositionException, OverrideParseException, SearchPathException)


Task = Callable[[DictConfig], Any]


def hydra_command(config_name: str, prog: str = "entrgi") -> Callable[[Task], Callable[[], None]]:
    """Decorate a task `f(cfg)` into the command `main()`: `hydra.main` reading `pkg://entrgi.conf`'s
    `<config_name>.yaml`, where a composition error prints `<prog>: error: <describe(error)>` and exits 2.

    Until the job starts, HYDRA_FULL_ERROR=1 makes Hydra raise its composition errors to `main`
    rather than print them; the job itself runs with the user's HYDRA_FULL_ERROR again, so its
    own errors are reported by Hydra as before (and by the job: see `entrgi.run`). A user who
    set HYDRA_FULL_ERROR=1 gets Hydra's full stack trace for composition errors as well.
    Multirun (`-m`) composes every job before launching any, so a bad sweep value fails the same way.
    """

    def decorate(task: Task) -> Callable[[], None]:
        user_setting: str | None = None

        @functools.wraps(task)
        def job(cfg: DictConfig) -> Any:
            _set_env(_FULL_ERROR, user_setting)
            return task(cfg)

        app = hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=config_name)(job)

        @functools.wraps(task)
        def main() -> None:
            nonlocal user_setting
            user_setting = os.environ.get(_FULL_ERROR)
            if user_setting == "1":
                app()
                return
            os.environ[_FULL_ERROR] = "1"
            try:
                app()
            except _COMPOSITION_ERRORS as error:
                print(f"{prog}: error: {describe(error)}", file=sys.stderr)
                sys.exit(2)
            finally:
                _set_env(_FULL_ERROR, user_setting)

        return main

    return decorate


def describe(error: Exception) -> str:
    """One line for a Hydra composition error: the override or key at fault, what is wrong, what is allowed."""
    if isinstance(error, MissingConfigException) and "/" in (error.missing_cfg_file or ""):
        group, _, name = error.missing_cfg_file.rpartition("/")
        # The file that names it when that is a group's option (`In 'experiment/x'`), not the primary config.
        parent = re.match(r"In '([^']+)': ", str(error))
        in_group = parent is not None and "/" in parent.group(1) and parent.group(1) != "hydra/config"
        inside = f" (in {parent.group(1)})" if in_group else ""
        options = error.options or group_options(group)
        listed = f"; the options are {', '.join(options)}" if options else ""
        return f"{group}={name}{inside}: no such option{listed}"
    cause = error.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        return f"{cause.full_key}: no such key{_keys_beside(cause)}"
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        return f"{cause.full_key}: {_first_line(cause)}"
    if isinstance(error, OverrideParseException):
        return f"{error.override}: {_first_line(error)}"
    return " ".join(str(error).split())


def group_options(group: str) -> list[str]:
    """The options of a config group in the packaged configs, as Hydra lists them (searched when Hydra's
    own error does not list them, e.g. for an element of `evaluator=[...]`; a user search path is not)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return GlobalHydra.instance().config_loader().get_group_options(group)


def _keys_beside(error: OmegaConfBaseException) -> str:
    """`; the keys of <node> are a, b, …`: the keys of the config node a missing key was looked up in."""
    node = error.parent_node
    if not isinstance(node, DictConfig):
        return ""
    keys = [str(key) for key in node.keys() if not str(key).startswith("_")]
    parent = error.full_key.rpartition(".")[0]
    schema = OmegaConf.get_type(node)
    owner = f"{parent} ({schema.__name__})" if parent and schema is not None else parent or "the config"
    return f"; the keys of {owner} are {', '.join(keys)}"


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
