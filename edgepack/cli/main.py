"""The `edgepack` command: parses, calls the pipeline, prints. Errors become one line and an exit code."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from edgepack import __version__
from edgepack.errors import EXIT_ERROR, EdgepackError, describe


def _library_log():
    """Context manager sending third-party output to a log for the running command (see edgepack.capture)."""
    from edgepack.capture import library_output_to_log
    from edgepack.cli.terminal import bind

    verbose = click.get_current_context().find_root().params.get("verbose", False)
    return library_output_to_log(bind, verbose=verbose)


def _check_target_options(targets: tuple[str, ...]) -> None:
    """An unknown --target is a usage error (exit 2), with the closest known name."""
    from edgepack.errors import ConfigError
    from edgepack.registry import check_target_name

    for name in targets:
        try:
            check_target_name(name)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--target") from None


def _handle_errors(command):
    """Turn EdgepackErrors (and unexpected exceptions) into one line on stderr and an exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return command(*args, **kwargs)
        except EdgepackError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, KeyboardInterrupt):
            raise
        except OSError as exc:  # a full disk, a permission problem: name the file, not the exception class
            if debug:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or exc} (errno {exc.errno})", err=True)
            sys.exit(EXIT_ERROR)
        except Exception as exc:
            if debug:
                raise
            click.echo(f"internal error: {describe(exc)} (rerun with --debug for the traceback)", err=True)
            sys.exit(EXIT_ERROR)

    return wrapper


@click.group()
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("--verbose", is_flag=True, help="Show the libraries' own output (warnings, converter progress) on the "
              "terminal instead of only in the bundle's pack.log.")
@click.version_option(__version__, prog_name="edgepack")
def main(debug: bool, verbose: bool) -> None:
    """Turn a PyTorch model into verified deployment bundles for edge devices."""


_FILE = click.Path(path_type=Path, dir_okay=False)


@main.command()
@click.argument("recipe", required=False, type=_FILE)
@click.option("--model", "model_ref", metavar="PATH.py:FUNCTION",
              help="Without RECIPE: the model factory; the recipe is inferred as `edgepack init` does.")
@click.option("--weights", type=_FILE, help="With --model: .safetensors weights (or a state dict .pt).")
@click.option("--calib", type=_FILE, help="With --model: calibration data (.npz, arrays named after the inputs).")
@click.option("--eval", "eval_data", type=_FILE, help="With --model: evaluation data (.npz with labels).")
@click.option("--labels", help="With --model: the label array (default: guessed).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Bundle directory (overrides the recipe).")
@click.option("--target", "targets", multiple=True, help="Build only this target (repeatable; overrides the recipe).")
@click.option("--dump-config", is_flag=True, help="Print the validated recipe with defaults filled in, then exit.")
@click.option("--no-bench", is_flag=True, help="Skip the isolated-process benchmark (latency in the manifest "
              "then comes only from the in-process measurement after verification).")
@click.option("--force", is_flag=True, help="Replace the output folder even when it is not an intact edgepack bundle.")
@click.option("--sign", "sign_key", type=_FILE,
              help="Sign the bundle with this ed25519 private key (see `edgepack keygen`); a passphrase comes "
              "from EDGEPACK_KEY_PASSPHRASE.")
@_handle_errors
def pack(recipe: Path | None, model_ref: str | None, weights: Path | None, calib: Path | None,
         eval_data: Path | None, labels: str | None, out: Path | None, targets: tuple[str, ...], dump_config: bool,
         no_bench: bool, force: bool, sign_key: Path | None) -> None:
    """Quantize, export and verify RECIPE's model for each target; write a bundle.

    Without a recipe file: pack --model model.py:build --weights W --calib C.npz --eval E.npz [--target x86]."""
    _check_target_options(targets)
    if model_ref is not None:
        resolved = _one_line_recipe(recipe, model_ref, weights, calib, eval_data, labels, out, targets)
    else:
        from edgepack.recipe.load import load_recipe

        given = [name for name, value in (("--weights", weights), ("--calib", calib), ("--eval", eval_data),
                                          ("--labels", labels)) if value is not None]
        if recipe is None or given:
            raise click.UsageError("give a RECIPE file, or --model with --weights, --calib and --eval"
                                   + (f" ({', '.join(given)} without --model)" if given else ""))
        resolved = load_recipe(recipe, output=out, targets=targets)
    if dump_config:
        import yaml

        if model_ref is not None:
            click.echo(f"# the recipe of `pack --model {model_ref}`: save it in {resolved.base_dir} "
                       "(the factory is imported from the recipe's folder)")
        click.echo(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False), nl=False)
        return
    from edgepack.cli.terminal import TerminalProgress, render_pack
    from edgepack.pipeline import pack as run_pack

    key = _private_key(sign_key) if sign_key is not None else None  # a bad key fails before any work
    with _library_log() as log_path:
        result = run_pack(resolved, TerminalProgress(), bench=not no_bench, log_path=log_path, force=force,
                          sign_key=key)
    render_pack(result)
    sys.exit(result.exit_code)


def _one_line_recipe(recipe: Path | None, model_ref: str, weights: Path | None, calib: Path | None,
                     eval_data: Path | None, labels: str | None, out: Path | None, targets: tuple[str, ...]):
    """The recipe of `pack --model ...`, inferred and validated like one written by `edgepack init`."""
    from edgepack.recipe.scaffold_file import recipe_from_files

    missing = [name for name, value in (("--weights", weights), ("--calib", calib), ("--eval", eval_data))
               if value is None]
    if recipe is not None or missing:
        raise click.UsageError("--model replaces RECIPE" if recipe is not None else
                               f"--model needs {', '.join(missing)} (or write a recipe with `edgepack init`)")
    assert weights is not None and calib is not None and eval_data is not None
    return recipe_from_files(model_ref, weights, calib, eval_data, labels=labels, targets=targets, output=out)


@main.command()
@click.option("--model", "model_ref", required=True, metavar="PATH.py:FUNCTION",
              help="The model factory: a function in a Python file that returns the torch.nn.Module.")
@click.option("--weights", required=True, type=_FILE, help=".safetensors weights (or a state dict .pt).")
@click.option("--data", required=True, type=_FILE,
              help="Evaluation data: .npz with one array per forward argument and the labels.")
@click.option("--calib", type=_FILE, help="Calibration data (.npz); default: a seeded split of --data, written next "
              "to the recipe.")
@click.option("--labels", help="Name of the label array (default: guessed).")
@click.option("--out", type=_FILE, help="Recipe file to write (default: recipe.yaml next to the model file).")
@click.option("--force", is_flag=True, help="Replace the recipe and split files if they exist.")
@_handle_errors
def init(model_ref: str, weights: Path, data: Path, calib: Path | None, labels: str | None, out: Path | None,
         force: bool) -> None:
    """Write a commented recipe from a model and its data, that `edgepack pack` accepts as it is."""
    from edgepack.recipe.scaffold_file import write_scaffold

    result = write_scaffold(model_ref, weights, data, calib=calib, labels=labels, out=out, force=force)
    for path in result.data_files:
        click.echo(f"wrote {path}")
    click.echo(f"wrote {result.recipe}; guessed (see the comments in the file):")
    for guess in result.guesses:
        click.echo(f"  {guess}")
    click.echo(f"next: edgepack pack {result.recipe}")


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--target", "targets", multiple=True, help="Tune only this target (repeatable; overrides the recipe).")
@click.option("--fragment", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the chosen configurations as a recipe fragment (`tuned:`) to this file.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Candidates scored at once in a local process pool (default: recipe tune.workers, else 1 on a "
              "host with 2 cores or fewer and half the cores up to 4 otherwise); latency is measured alone.")
@click.option("--ray", "ray_address", metavar="ADDRESS|auto",
              help="Score candidates as tasks on a running Ray cluster (`ray start --head`); needs the `ray` extra.")
@_handle_errors
def tune(recipe: Path, targets: tuple[str, ...], fragment: Path | None, workers: int | None,
         ray_address: str | None) -> None:
    """Search each target of RECIPE for the cheapest configuration that meets the budget (calibration method,
    bias correction, a float prefix), scored on held-out calibration data; print it as a recipe fragment.
    Exit 0 when every target met the budget, 3 when one could not."""
    from edgepack.cli.terminal import TerminalProgress, render_tuning
    from edgepack.errors import EXIT_DRIFT
    from edgepack.pipeline import tune_only
    from edgepack.recipe.load import load_recipe
    from edgepack.tuning.pool import require_ray
    from edgepack.tuning.run import fragment as fragment_text

    _check_target_options(targets)
    resolved = load_recipe(recipe)
    if targets:
        resolved = resolved.model_copy(update={"targets": list(targets)})
    scale = {key: value for key, value in (("workers", workers), ("ray", ray_address)) if value is not None}
    if scale:
        resolved = resolved.model_copy(update={"tune": resolved.tune.model_copy(update=scale)})
    if resolved.tune.ray is not None:
        require_ray(resolved.tune.ray)  # installed, and the address reachable, before any heavy work
    with _library_log():
        records = tune_only(resolved, TerminalProgress())
    render_tuning(records)
    text = fragment_text(records)
    if fragment is not None:
        fragment.write_text(text)
        click.echo(f"fragment written: {fragment} (paste it into {recipe} to build without searching)")
    else:
        click.echo(text, nl=False)
    sys.exit(0 if all(record.met_budget for record in records.values()) else EXIT_DRIFT)


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Output directory (overrides the recipe).")
@click.option("--force", is_flag=True, help="Replace the output folder even when it is not an intact edgepack bundle.")
@_handle_errors
def prune(recipe: Path, out: Path | None, force: bool) -> None:
    """Prune (and distill) RECIPE's model only: writes the pruned model, its fp32 ONNX and the report."""
    from edgepack.cli.terminal import TerminalProgress, render_pack
    from edgepack.pipeline import prune_only
    from edgepack.recipe.load import load_recipe

    resolved = load_recipe(recipe, output=out)
    with _library_log() as log_path:
        result = prune_only(resolved, TerminalProgress(), log_path=log_path, force=force)
    render_pack(result)
    sys.exit(result.exit_code)


def _private_key(path: Path):
    import os

    from edgepack.bundle.signing import PASSPHRASE_ENV, load_private_key

    return load_private_key(path, os.environ.get(PASSPHRASE_ENV))


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path, file_okay=False))
@click.option("--data", type=click.Path(path_type=Path, dir_okay=False),
              help="Evaluation data (.npz/.npy/.csv/.parquet) with the bundle's input names: drift is re-measured "
              "on it.")
@click.option("--labels", help="Name of the label array or column (default: the recipe's).")
@click.option("--threads", default=2, show_default=True, help="Runtime threads.")
@click.option("--budget", "budget_path", type=click.Path(path_type=Path, dir_okay=False),
              help="YAML file of budget bounds to check against (instead of the bundle's own).")
@click.option("--recipe", "recipe_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Take the budget from this recipe (instead of the bundle's own).")
@click.option("--key", "key_path", type=click.Path(path_type=Path, dir_okay=False),
              help="ed25519 public key (PEM) the bundle must be signed with.")
@click.option("--device-report", "device_report", type=click.Path(path_type=Path, dir_okay=False),
              help="The --json output of the bundle's verify_on_device.py, run on a device.")
@_handle_errors
def verify(bundle: Path, data: Path | None, labels: str | None, threads: int, budget_path: Path | None,
           recipe_path: Path | None, key_path: Path | None, device_report: Path | None) -> None:
    """Re-check BUNDLE: signature (--key), checksums and unlisted files; drift of every artifact on DATA
    against a budget (--budget or --recipe, else the bundle's own) and, on the packing data, the recorded
    metrics; and a device's report (--device-report). Give --data, --device-report or both."""
    from edgepack.bundle.check import verify_bundle
    from edgepack.cli.terminal import render_bundle_check
    from edgepack.recipe.load import load_budget

    if data is None and device_report is None:
        raise click.UsageError("give --data (re-measure drift here), --device-report (a device's results) or both")
    budget = load_budget(budget_path=budget_path, recipe_path=recipe_path)
    with _library_log():
        check = verify_bundle(bundle, data, labels=labels, threads=threads, budget=budget, key=key_path,
                              device_report=device_report)
    render_bundle_check(check)
    sys.exit(check.exit_code)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path, file_okay=False))
@click.option("--batch-size", default=64, show_default=True, help="The larger batch size (batch 1 is always timed).")
@click.option("--warmup", default=5, show_default=True, help="Untimed runs before timing.")
@click.option("--repeats", default=30, show_default=True, help="Timed runs; the median is reported.")
@click.option("--threads", default=2, show_default=True, help="Intra-op threads for every runtime.")
@click.option("--data", type=click.Path(path_type=Path, dir_okay=False),
              help="Input data (default: the recipe's evaluation data, else seeded random data).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the figures here.")
@_handle_errors
def bench(bundle: Path, batch_size: int, warmup: int, repeats: int, threads: int, data: Path | None,
          json_path: Path | None) -> None:
    """Time every artifact of BUNDLE and the float baselines, each in a fresh process; update its manifest."""
    from edgepack.benchmark.bench import BenchSettings, bench_bundle_and_record
    from edgepack.cli.terminal import TerminalProgress, render_bench

    settings = BenchSettings(batch_size=batch_size, warmup=warmup, repeats=repeats, threads=threads)
    with _library_log():
        figures = bench_bundle_and_record(bundle, settings, data=data, progress=TerminalProgress(),
                                          json_path=json_path)
    render_bench(figures)


@main.command()
@click.argument("private_key", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--public", "public_key", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the public key (default: PRIVATE_KEY with .pub.pem).")
@_handle_errors
def keygen(private_key: Path, public_key: Path | None) -> None:
    """Create an ed25519 key pair for signing bundles (`pack --sign`, `sign`); verify with the public key.
    A passphrase in EDGEPACK_KEY_PASSPHRASE encrypts the private key."""
    import os

    from edgepack.bundle.signing import PASSPHRASE_ENV, generate_keypair

    public_key = public_key or private_key.with_name(private_key.name.removesuffix(".pem") + ".pub.pem")
    key_id = generate_keypair(private_key, public_key, os.environ.get(PASSPHRASE_ENV))
    click.echo(f"wrote {private_key} (private, keep it secret) and {public_key} (give it to whoever verifies); "
               f"key {key_id[:16]}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path, file_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="ed25519 private key (PEM); a passphrase comes from EDGEPACK_KEY_PASSPHRASE.")
@_handle_errors
def sign(bundle: Path, key_path: Path) -> None:
    """Sign an intact BUNDLE (every file matching its manifest) with KEY; writes BUNDLE/signature.json."""
    from edgepack.bundle.files import why_not_replaceable
    from edgepack.bundle.signing import fingerprint, sign_bundle
    from edgepack.errors import VerificationError

    key = _private_key(key_path)
    problem = why_not_replaceable(bundle)
    if problem is not None:
        raise VerificationError(f"{bundle}: not signed: {problem}")
    path = sign_bundle(bundle, key)
    click.echo(f"signed {bundle}/manifest.json with key {fingerprint(key.public_key())[:16]}: {path}")


@main.command()
@_handle_errors
def targets() -> None:
    """List every target: what it builds, whether its packages are installed here (else the pip command),
    the calibration methods it honours and its options with their defaults."""
    from edgepack.cli.terminal import render_targets
    from edgepack.targets.catalog import describe_targets

    render_targets(describe_targets())
