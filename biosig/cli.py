"""`biosig` command line. Every MLproject entry point is also a subcommand here.

Options are generated from each command's config dataclass, so `biosig CMD --key value`,
`mlflow run . -e CMD -P key=value` and `key: value` in a YAML file (`--config FILE`) are the same keys,
validated by one function (biosig.config.load_config).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from biosig.config import BaseConfig, field_help, load_config
from biosig.errors import BiosigError, Terminated

# granite-tsfm configures the root logger at import and hub access must never be attempted.
os.environ.setdefault("TSFM_PYTHON_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow's INFO lines (table creation, system-metrics start/stop, "View run …") would bury biosig's own;
# its warnings still show. MLFLOW_LOGGING_LEVEL=INFO brings them back.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def config_option_list(config_cls: type[BaseConfig]) -> list[click.Option]:
    """`--config FILE` and one `--key/--key-with-dashes` option per config field, its help line taken from
    the field's metadata (biosig.config.option), with its type, allowed values and default. A backbone's own
    keys come last, grouped and marked by the architectures that read them."""
    options = [click.Option(["--config", "config_file"], default=None, metavar="FILE",
                            help="YAML file of config keys; command-line keys override it")]
    helps = field_help(config_cls)
    hints = typing.get_type_hints(config_cls)
    owners = _backbone_option_owners(config_cls)
    fields = sorted(dataclasses.fields(config_cls), key=lambda f: owners.get(f.name, ""))  # stable: shared keys first
    for field in fields:
        names = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kind, metavar = _describe_type(hints[field.name])
        text = " ".join(filter(None, [f"({owners[field.name]} only)" if field.name in owners else "",
                                      helps.get(field.name, ""), _plugin_options(config_cls, field.name)]))
        options.append(click.Option([*names, field.name], default=None, metavar=metavar,
                                    help=f"{text + ' ' if text else ''}[{kind}; default: {default!r}]"))
    return options


def _backbone_option_owners(config_cls: type) -> dict[str, str]:
    """Config fields that are some backbones' own options (the pretrain config composes the built-ins'),
    with the archs that declare them: {"d_state": "mamba2", "mode": "ttm, tspulse", …}."""
    if "arch" not in {f.name for f in dataclasses.fields(config_cls)}:
        return {}
    from biosig import backbones

    owners: dict[str, list[str]] = {}
    for arch, spec in sorted(backbones.installed().items(), key=lambda item: item[0] != "ttm"):
        for key in field_help(spec.options) if spec.options else {}:
            owners.setdefault(key, []).append(arch)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    return {key: ", ".join(archs) for key, archs in owners.items() if key in fields}


def _plugin_options(config_cls: type, key: str) -> str:
    """For `backbone_options`: the installed backbones whose keys it sets (those that are no key of this config)."""
    if key != "backbone_options":
        return ""
    from biosig import backbones

    fields = {f.name for f in dataclasses.fields(config_cls)}
    found = [f"{arch} ({', '.join(keys)})" for arch, spec in sorted(backbones.installed().items())
             if (keys := [k for k in spec.option_defaults() if k not in fields])]
    return f"Installed: {'; '.join(found)}." if found else ""


def _describe_type(annotation: Any) -> tuple[str, str]:
    """(help words, metavar) for a config annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return f"one of {', '.join(map(str, args))}", "[" + "|".join(map(str, args)) + "]"
    if origin in (typing.Union, types.UnionType) and args:
        return _describe_type(args[0])
    if origin is list:
        inner = typing.get_args(annotation)[0]
        if typing.get_origin(inner) is typing.Literal:
            values = typing.get_args(inner)
            return f"comma-separated, each one of {', '.join(map(str, values))}", "LIST"
        return "comma-separated list", "LIST"
    return {bool: ("true or false", "BOOL"), int: ("integer", "INT"), float: ("number", "FLOAT")}.get(
        annotation, ("text", "TEXT"))


def build_config(config_cls: type[BaseConfig], config_file: str | None, options: dict[str, Any]) -> BaseConfig:
    overrides = {k: v for k, v in options.items() if v is not None}
    return load_config(config_cls, config_file or None, overrides)


def _load(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


class JobCommand(click.Command):
    """`biosig NAME` for a command of biosig.commands. Its module (and with it torch, MLflow, …) is imported
    only when the command runs or its options are asked for, so `biosig --help` stays fast."""

    def __init__(self, name: str, config_path: str, target: str, help_text: str,
                 exit_code: Callable[[Any], int] | None = None, argument: str = "") -> None:
        params = [click.Argument([f"{argument}_argument"], required=False, metavar=argument.upper())] if argument else []
        super().__init__(name, help=help_text, short_help=help_text.split(". ")[0].rstrip("."),
                         callback=self._run, params=params)
        self.config_path, self.target, self.exit_code = config_path, target, exit_code
        self.argument = argument  # a config key that may also be given as the one positional argument
        self._options_loaded = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._options_loaded:
            self.params = config_option_list(_load(self.config_path)) + self.params
            self._options_loaded = True
        return super().get_params(ctx)

    def _run(self, config_file: str | None, **options: Any) -> None:
        if self.argument:
            positional = options.pop(f"{self.argument}_argument")
            options[self.argument] = options[self.argument] or positional
        result = _load(self.target)(build_config(_load(self.config_path), config_file, options))
        if self.exit_code is not None and self.exit_code(result):
            raise click.exceptions.Exit(self.exit_code(result))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="biosig")
def cli() -> None:
    """biosig: MLflow experiment tracking and model registry for biosignal foundation models."""


#: name, "module:Config", "module:run_function", help, exit code from the result (None: always 0)
JOBS: list[tuple[str, str, str, str, Callable[[Any], int] | None]] = [
    ("log-dataset", "biosig.commands.configs:DatasetConfig", "biosig.commands.log_dataset:run_log_dataset",
     "Build or read a windowed dataset, write it once under its content digest and log it to MLflow.", None),
    ("prepare-splits", "biosig.commands.configs:PrepareSplitsConfig",
     "biosig.commands.prepare_splits:run_prepare_splits",
     "Subject-level split manifests (or k cross-validation folds), logged with their digests.", None),
    ("pretrain", "biosig.commands.configs:PretrainConfig", "biosig.commands.pretrain:run_pretrain",
     "Pretrain a backbone (masked reconstruction or forecasting) and register it by its conventional name.", None),
    ("finetune", "biosig.commands.configs:FinetuneConfig", "biosig.commands.finetune:run_finetune",
     "Fine-tune a registered checkpoint (staged unfreezing) and register the pyfunc classifier.", None),
    ("main", "biosig.commands.configs:MainConfig", "biosig.commands.main:run_main",
     "The end-to-end job: synthetic dataset -> pretrain -> finetune(checkpoint=auto) -> registered model.", None),
    ("tune", "biosig.commands.configs:TuneConfig", "biosig.commands.tune:run_tune",
     "Optuna search over unfreeze_last_n and lr (plus a search-space file): one nested run per trial.", None),
    ("evaluate", "biosig.commands.configs:EvaluateConfig", "biosig.commands.evaluate:run_evaluate",
     "Window- and subject-level metrics of a registered model; optional calibration and overlap voting.", None),
    ("compare", "biosig.commands.configs:CompareConfig", "biosig.commands.compare:run_compare",
     "Linear probe (and fine-tune) of several checkpoints on one dataset and split: a leaderboard.", None),
    ("import-checkpoint", "biosig.commands.configs:ImportCheckpointConfig",
     "biosig.commands.import_checkpoint:run_import_checkpoint",
     "Register a backbone trained outside biosig (a granite-tsfm Hugging Face folder, hf:ORG/NAME from the local "
     "cache, or a torch.save/safetensors state dict) by its conventional name, with the weights' sha256, path and "
     "importer; the same bytes again return the version that holds them.", None),
    ("export", "biosig.commands.configs:ExportConfig", "biosig.commands.export:run_export",
     "Write a registered pretrained checkpoint as a Hugging Face folder that granite-tsfm's from_pretrained "
     "loads, with a Hub README.md model card.", None),
    ("promote", "biosig.commands.configs:PromoteConfig", "biosig.commands.promote:run_promote",
     "Evaluate a registered version against its registry policy; move the alias only if every rule passes. "
     "Exit code 1 when the promotion is rejected (the decision is recorded either way).",
     lambda decision: 0 if decision.passed else 1),
]
for _job in JOBS:
    cli.add_command(JobCommand(*_job))


@cli.command("server")
@click.option("--backend-store-uri", default="", help="postgresql+psycopg2://user:pw@host/db or sqlite:///path "
              "(default: sqlite:///$PWD/mlflow.db)")
@click.option("--artifacts-destination", default="", help="s3://bucket/prefix (MinIO: set MLFLOW_S3_ENDPOINT_URL) "
              "or a local directory (default: ./mlartifacts)")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int)
@click.option("--basic-auth", is_flag=True, help="MLflow's basic-auth app (needs mlflow[auth] and "
              "MLFLOW_AUTH_CONFIG_PATH with the admin password)")
@click.option("--allowed-hosts", default="", help="extra Host headers to accept (comma-separated)")
@click.option("--print-only", is_flag=True, help="print the mlflow server command instead of running it")
def server_cmd(backend_store_uri: str, artifacts_destination: str, host: str, port: int, workers: int,
               basic_auth: bool, allowed_hosts: str, print_only: bool) -> None:
    """Start MLflow's own tracking server for a single machine (the compose stack without Docker)."""
    import shlex

    args = ["mlflow", "server", "--backend-store-uri", backend_store_uri or f"sqlite:///{os.getcwd()}/mlflow.db",
            "--artifacts-destination", artifacts_destination or os.path.join(os.getcwd(), "mlartifacts"),
            "--host", host, "--port", str(port), "--workers", str(workers)]
    if basic_auth:
        args += ["--app-name", "basic-auth"]
    if allowed_hosts:
        args += ["--allowed-hosts", f"localhost:*,127.0.0.1:*,{allowed_hosts}"]
    from biosig.secrets import redact_value

    click.echo(f"biosig: {redact_value(shlex.join(args))}", err=True)
    if not print_only:
        os.execvp(args[0], args)


def _finite(param: click.Parameter, value: float | None) -> float | None:
    """click's FloatRange lets nan through (every comparison with nan is False)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}", param=param)
    return value


@cli.command("doctor")
@click.option("--experiment", "experiments", multiple=True, help="experiment to check (repeatable; default: all)")
@click.option("--tracking-uri", "tracking_uri", default="", help="default: $MLFLOW_TRACKING_URI or ./mlflow.db")
@click.option("--fix", is_flag=True, help="end dead RUNNING runs as KILLED; delete model versions of runs that did not "
              "finish; remove runs whose parameters hold a password")
@click.option("--stale-after", "stale_after", type=click.FloatRange(min=0, min_open=True), default=None,
              callback=lambda ctx, param, value: _finite(param, value),
              help="minutes without a heartbeat before a run on another host counts as dead (default 5)")
@click.option("--keep", is_flag=True, help="with --fix: tag orphan model versions biosig.orphan instead of deleting "
              "them (their aliases are removed either way)")
def doctor_cmd(experiments: tuple[str, ...], tracking_uri: str, fix: bool, stale_after: float | None,
               keep: bool) -> None:
    """Find runs left RUNNING by dead processes, model versions of runs that did not finish, dataset digests
    that no longer match their files, and passwords in parameters. Exit code 1 while any problem is left."""
    from biosig.tracking.doctor import run_doctor

    raise click.exceptions.Exit(run_doctor(experiments, tracking_uri, fix, stale_after, keep))


@cli.command("backbones")
def backbones_cmd() -> None:
    """The installed backbones (biosig's own and plug-ins of the entry-point group biosig.backbones): arch,
    where it comes from, its pretraining objectives, an example registered name and its own options."""
    from biosig import backbones
    from biosig.commands.configs import PretrainConfig

    pretrain_keys = {f.name for f in dataclasses.fields(PretrainConfig)}  # the built-ins' options are keys of their own
    for arch, spec in sorted(backbones.installed().items()):
        click.echo(f"{arch:<10} from {backbones.origin(arch):<18} objectives: {', '.join(spec.objectives):<9} "
                   f"e.g. {spec.example}")
        click.echo(f"{'':10} {spec.summary}")
        if spec.options:
            helps, hints = field_help(spec.options), typing.get_type_hints(spec.options)
            for key, default in spec.option_defaults().items():
                spelling = f"--{key.replace('_', '-')}" if key in pretrain_keys else f"backbone_options {key}="
                click.echo(f"{'':10} {spelling} {default!r} ({_describe_type(hints[key])[0]}): {helps.get(key, '')}")


@cli.group("dataset")
def dataset_group() -> None:
    """Sharded datasets built in parts (log-dataset output=PREFIX/ shard=i/n)."""


dataset_group.add_command(JobCommand(
    "finalize", "biosig.commands.configs:FinalizeDatasetConfig", "biosig.commands.log_dataset:run_finalize_dataset",
    "Write manifest.json of the sharded dataset at PREFIX once every shard=i/n part is built, and log it to "
    "MLflow like log-dataset (data_errors.csv covers every record of every part).", argument="prefix"))


@cli.group("registry")
def registry_group() -> None:
    """Inspect registered models: versions with aliases and metrics, promotion history."""


def _registry_view(name: str, view: str, help_text: str) -> None:
    @registry_group.command(name, help=help_text)
    @click.argument("model")
    @click.option("--tracking-uri", "tracking_uri", default="", help="default: $MLFLOW_TRACKING_URI or ./mlflow.db")
    def command(model: str, tracking_uri: str) -> None:
        from biosig.registry.report import render

        click.echo(render(view, model, tracking_uri))


_registry_view("show", "show", "Versions of MODEL with aliases, stage, test metrics, parent checkpoint and dataset.")
_registry_view("history", "history", "Every promotion attempt for MODEL (the audit log), oldest first.")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry: BiosigErrors print as one line (no traceback) and exit 2; a run that
    `mlflow run` created is ended FAILED even when the command fails before attaching to it."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="biosig", standalone_mode=False)
        if isinstance(code, int):  # a command's click Exit(n) is returned, not raised, in this mode
            return code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        _fail_pending_run(KeyboardInterrupt())
        click.echo("biosig: aborted", err=True)
        return 130
    except click.ClickException as exc:
        _fail_pending_run(exc)
        context = getattr(exc, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        click.echo(f"biosig: error: {exc.format_message()}{hint}", err=True)  # one line, not click's usage block
        return exc.exit_code
    except BiosigError as exc:
        _fail_pending_run(exc)
        click.echo(f"biosig: error: {exc}", err=True)
        return 2
    except OSError as exc:
        from biosig.data.atomic import disk_error  # only now: `--help` stays free of the data stack

        disk = disk_error(exc, Path(exc.filename).parent if exc.filename else Path.cwd())
        if disk is None:
            _fail_pending_run(exc)
            raise
        _fail_pending_run(disk)
        click.echo(f"biosig: error: {disk}", err=True)
        return 2
    except Terminated:
        _fail_pending_run(Terminated())
        click.echo("biosig: terminated by SIGTERM; the run was ended KILLED", err=True)
        return 143
    except BaseException as exc:
        _fail_pending_run(exc)
        raise
    return 0


def _fail_pending_run(exc: BaseException) -> None:
    if os.environ.get("MLFLOW_RUN_ID"):
        from biosig.tracking.run import fail_run_from_env

        fail_run_from_env(exc)


def run_entrypoint(command: str, argv: Sequence[str]) -> None:
    """MLproject entry points pass `--config {config}` (empty when unset) and `--key value` extras."""
    args: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        if items[i].startswith("--") and i + 1 < len(items) and not items[i + 1].startswith("--"):
            if items[i + 1] != "":
                args += items[i:i + 2]
            i += 2
        else:
            args.append(items[i])
            i += 1
    sys.exit(main([*command.split(), *args]))


if __name__ == "__main__":
    sys.exit(main())
