"""The `verticalft` command. Thin: parse, call, print. Heavy imports live inside commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer
from rich.console import Console
from rich.table import Table

from verticalft.logs import show_logs
from verticalft.recipe import Recipe, RecipeError, Source, load_recipe

if TYPE_CHECKING:
    from verticalft.formats import Kind
    from verticalft.preview import Rendered
    from verticalft.rundir import RunDir

# What `verticalft --help` says: for the user (the module docstring above is for developers).
HELP = (
    "Turn an open base model into a cheap, strong domain model: one recipe per vertical.\n\n"
    "Main commands: validate (check a recipe), plan (cost before anything runs), run (curate, cpt, "
    "sft, dpo, distill, quantize, eval, bench, cost, route, export), status, report, export (quantized "
    "folders with model cards), push (to the Hub), new (scaffold a vertical).\n\n"
    "Try it on CPU in minutes: verticalft run recipes/finance.yaml -p tiny"
)
app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)
# Wide enough for the plan/status tables when output is piped (CI logs, `| tee`).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def package_version() -> str:
    """The installed package's version (what pip reports), else the source tree's `__version__`."""
    from importlib import metadata

    try:
        return metadata.version("verticalft")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        import verticalft

        return verticalft.__version__


def _print_version(value: bool) -> None:
    if value:
        console.print(f"verticalft {package_version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit"
    ),
) -> None:
    """Options before any command (the help text is HELP)."""
    # the library's progress lines (stages, launches, caches), as they are, beside our own output
    show_logs(lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))


ProfileOpt = typer.Option(
    "full", "--profile", "-p", envvar="PROFILE", help="full, tiny, or a recipes/profiles/*.yaml"
)
SetOpt = typer.Option(None, "--set", "-s", help="Override a recipe key: key.path=value (repeatable)")
RunsOpt = typer.Option("runs", "--runs-dir", envvar="VERTICALFT_RUNS", help="Root of run directories")


def _load(recipe: Path, profile: str, overrides: list[str] | None) -> Recipe:
    try:
        return load_recipe(recipe, profile, overrides or [])
    except RecipeError as exc:
        err_console.print(f"[bold red]{exc.source}[/]: {len(exc.problems)} problem(s)")
        for p in exc.problems:
            err_console.print(f"  - [bold]{p.path or '<root>'}[/]: {p.message}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def validate(recipe: Path, profile: str = ProfileOpt, overrides: list[str] = SetOpt) -> None:
    """Check a recipe (and its profile overlay); lists every problem, exit 2 if any."""
    r = _load(recipe, profile, overrides)
    from verticalft.pipeline import (
        chat_template_problems,
        distill_vocab_check,
        enabled_stages,
        model_ref_check,
        preflight,
        tokenizer_file_problems,
    )

    stages = [s for s in enabled_stages(r) if s != "tiny_models"]
    # A model folder without a tokenizer, a Hub id the Hub does not know, teacher/student tokenizers
    # that cannot do logit distillation, a chat template the trained stages cannot mask: recipe
    # errors on any machine.
    wrong, ref_notes = model_ref_check(r)
    wrong = tokenizer_file_problems(r) + wrong
    notes: list[str] = []
    if not wrong and "distill" in stages:  # the vocabulary check loads those tokenizers
        wrong, notes = distill_vocab_check(r)
    if not wrong:
        wrong = chat_template_problems(r, stages)
    notes = ref_notes + notes
    # Rows a stage could never use (a format no reader knows, a field missing): found now, not
    # after curate keeps 0 rows or deep inside sft.
    formats_seen, bad_rows, data_notes = data_set_check(r)
    notes += data_notes
    for problem in [*wrong, *bad_rows]:
        err_console.print(f"[bold red]problem[/]: {problem}", highlight=False)
    if wrong or bad_rows:
        raise typer.Exit(2)
    console.print(
        f"[green]ok[/] {recipe} (profile {profile}): teacher {r.models.teacher}, "
        f"{len(r.models.students)} student(s), stages: {', '.join(stages) or 'none'}"
    )
    for problem in preflight(r, enabled_stages(r)):
        console.print(f"  [yellow]not runnable here yet[/]: {problem}", highlight=False)
    for line in formats_seen:
        console.print(f"  [dim]data[/]: {line}", highlight=False)
    for note in notes:
        console.print(f"  [dim]note[/]: {note}", highlight=False)
    from verticalft.launch import launch_warnings

    for warning in launch_warnings(r):
        console.print(f"  [yellow]warning[/]: {warning}", highlight=False)


VALIDATE_ROWS = 50  # rows of each set `validate` reads: enough to catch a wrong format, fast


def data_set_check(r: Recipe) -> tuple[list[str], list[str], list[str]]:
    """(one line per source of the sft/preferences sets and the eval set: its detected format(s);
    every row problem as `file:line: …`; notes) over the first VALIDATE_ROWS rows. Missing local
    files are preflight's to report. An `hf://` set is streamed (its first rows only, nothing
    downloaded whole): a dataset or config the Hub says does not exist is a problem, an unreachable
    Hub (offline) a note, since the set may well exist."""
    lines: list[str] = []
    problems: list[str] = []
    notes: list[str] = []
    set_names: tuple[Kind, ...] = ("sft", "preferences")
    sets: list[tuple[Kind | Literal["eval"], list[Source]]] = [
        (name, getattr(r.data, name) or []) for name in set_names
    ]
    evals = [(k, getattr(r.data, k)) for k in ("eval", "eval_rephrased")]
    checked: list[tuple[str, Kind | Literal["eval"], list[Source]]] = [(n, n, s) for n, s in sets]
    checked += [(k, "eval", [s] if s else []) for k, s in evals]
    for name, kind, sources in checked:
        for i, source in enumerate(sources):
            key = f"data.{name}" + (f".{i}" if len(sources) > 1 else "")
            line, bad, note = _source_check(key, kind, source)
            lines += [line] if line else []
            problems += bad
            notes += [note] if note else []
    return lines, problems, notes


def _source_check(
    key: str, name: Kind | Literal["eval"], source: Source
) -> tuple[str | None, list[str], str | None]:
    """(validate's line, problems, note) for one source of set `name` (see `data_set_check`)."""
    from verticalft.data import HF_SCHEME, DataError, HubUnreachable, check_set, located_rows
    from verticalft.scoring import item_problem

    if not source.path.startswith(HF_SCHEME) and not Path(source.path).exists():
        return None, [], None
    try:
        if name == "eval":
            try:
                rows = list(located_rows(source, VALIDATE_ROWS))
            except HubUnreachable:
                raise
            except DataError as exc:
                return None, [str(exc)], None
            bad = [
                f"{where}: {p}"
                for where, row in rows
                if (p := row if isinstance(row, str) else item_problem(row))
            ]
            return f"{key} {source.path}: eval items ({len(rows)} row(s) checked)", bad, None
        found, bad = check_set(source, name, VALIDATE_ROWS)
    except HubUnreachable as exc:
        return None, [], f"{key}: not checked: {exc}"
    read = sum(found.values()) + len(bad)
    seen = ", ".join(f"{fmt} ({n}/{read} rows)" for fmt, n in found.items()) or "no usable rows"
    return f"{key} {source.path}: format {seen}", bad, None


@app.command()
def plan(recipe: Path, profile: str = ProfileOpt, overrides: list[str] = SetOpt) -> None:
    """What each stage will cost (tokens, FLOPs, GPU-hours, $, GPU memory) before anything runs."""
    from verticalft.plan import plan_recipe

    r = _load(recipe, profile, overrides)
    p = plan_recipe(r)
    table = Table(
        title=f"plan: {r.name} ({profile}) on {p.gpu.name} × {r.compute.training_gpus} ({r.compute.nodes} node(s) × {r.compute.gpus_per_node})"
    )
    for col in (
        "stage",
        "model",
        "params",
        "method",
        "tokens",
        "FLOPs",
        "GPU-hours",
        "USD",
        "mem/GPU",
        "host/node",
        "fits",
    ):
        table.add_column(col, justify="right" if col not in ("stage", "model", "method") else "left")
    for s in p.stages:
        table.add_row(
            s.stage,
            s.model,
            _human(s.params)
            + (f" ({_human(s.active_params)} active)" if 0 < s.active_params < s.params else ""),
            s.method,
            _human(s.tokens),
            f"{s.flops:.2e}",
            f"{s.gpu_hours:,.3g}",
            f"${s.usd:,.2f}",
            f"{s.memory_gb_per_gpu:,.2f} GB",
            f"{s.host_gb_per_node:,.1f} GB" if s.host_gb_per_node is not None else "–",
            "[green]yes[/]" if s.fits else "[red]NO[/]",
        )
    console.print(table)
    console.print(
        f"total: {p.total_gpu_hours:,.1f} GPU-hours, ${p.total_usd:,.2f} at ${p.usd_per_gpu_hour}/GPU-hour"
    )
    for note in p.notes:
        console.print(f"  note: {note}")
    for warning in p.warnings:
        console.print(f"  [yellow]warning[/]: {warning}")


@app.command()
def run(
    recipe: Path,
    profile: str = ProfileOpt,
    until: str = typer.Option(None, "--until", "-u", help="Run stages up to and including this one"),
    only: list[str] = typer.Option(None, "--only", help="Run only these stages (inputs must be done)"),
    force: bool = typer.Option(False, "--force", help="Rerun stages even when done and unchanged"),
    overrides: list[str] = SetOpt,
    runs_dir: Path = RunsOpt,
) -> None:
    """Run the recipe's stages in order, skipping done ones whose inputs did not change."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    r = _load(recipe, profile, overrides)
    from verticalft.data import DataError
    from verticalft.pipeline import PreflightFailed, StageFailed, run_dir_for, run_recipe

    rd = run_dir_for(r, profile, runs_dir)
    console.print(f"[bold]{r.name}[/] ({profile}) → {rd.root}")

    from verticalft.nodes import NodeError, this_node

    try:
        node = this_node(r.compute.nodes)
    except NodeError:
        node = None  # run_recipe says what is wrong (exit 2)
    follower = node is not None and not node.leads  # writes nothing: no report, no tracking
    try:
        outcomes = run_recipe(r, rd, until=until, only=only, force=force, echo=console.print)
    except PreflightFailed as exc:  # nothing ran: fix the input or the machine (exit 2, like validate)
        err_console.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(2) from None
    except (StageFailed, DataError) as exc:
        err_console.print(f"[bold red]error[/]: {exc}", highlight=False)
        if rd.manifest_path.exists() and not follower:  # what did finish stays readable
            console.print(f"report (up to the failure): {_write_report(rd, f'{r.name} ({profile})')}")
        raise typer.Exit(1) from None

    if follower:
        console.print(
            f"[green]finished[/]: node {node.rank if node else '?'}'s part (node 0 writes the report)"
        )
        return
    done = sum(o.status == "done" for o in outcomes)
    report = _write_report(rd, f"{r.name} ({profile})")
    from verticalft.tracking import log_report

    log_report(r, rd, Path(report))
    console.print(
        f"[green]finished[/]: {done} stage(s) ran, {len(outcomes) - done} skipped — "
        f"manifest: {rd.manifest_path}"
    )
    console.print(f"report: {report}")


@app.command()
def report(
    recipe: Path, profile: str = ProfileOpt, overrides: list[str] = SetOpt, runs_dir: Path = RunsOpt
) -> None:
    """Re-price (the cost stage, from what eval/bench measured) and rebuild report.md + plots."""
    r = _load(recipe, profile, overrides)
    from verticalft.pipeline import StageFailed, enabled_stages, run_dir_for, run_recipe
    from verticalft.stages.registry import stage

    rd = run_dir_for(r, profile, runs_dir)
    if not rd.manifest_path.exists():
        err_console.print(f"[bold red]error[/]: no run at {rd.root}; run `verticalft run {recipe}` first")
        raise typer.Exit(1)
    again = [s for s in enabled_stages(r) if stage(s).derived]
    if again:
        try:
            run_recipe(r, rd, only=again, force=again, echo=console.print)
        except StageFailed as exc:
            err_console.print(f"[bold red]error[/]: {exc}", highlight=False)
            raise typer.Exit(1) from None
    written = _write_report(rd, f"{r.name} ({profile})")
    from verticalft.tracking import log_report

    log_report(r, rd, Path(written))
    console.print(f"report: {written}")


@app.command()
def export(
    recipe: Path,
    profile: str = ProfileOpt,
    model: list[str] = typer.Option(
        None, "--model", help="A model of the run (default: stages.export.models)"
    ),
    overrides: list[str] = SetOpt,
    runs_dir: Path = RunsOpt,
) -> None:
    """Quantize the chosen models (stages.export.schemes), measure the variants like every other
    model (eval, bench, cost, route) and write export/<model>/ folders with their model cards."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    extra = [f"stages.export.models=[{', '.join(model)}]"] if model else []
    r = _load(recipe, profile, [*(overrides or []), *extra])
    if r.stages.export is None:
        err_console.print(
            f"[bold red]error[/]: {recipe} has no stages.export section (add one, or pass --model)"
        )
        raise typer.Exit(2)
    from verticalft.data import DataError
    from verticalft.pipeline import PreflightFailed, StageFailed, enabled_stages, run_dir_for, run_recipe
    from verticalft.stages.quantize import QuantizeError

    rd = run_dir_for(r, profile, runs_dir)
    if not rd.manifest_path.exists():
        err_console.print(f"[bold red]error[/]: no run at {rd.root}; run `verticalft run {recipe}` first")
        raise typer.Exit(1)
    after = ("quantize", "eval", "bench", "cost", "route", "export")
    try:
        run_recipe(r, rd, only=[s for s in enabled_stages(r) if s in after], echo=console.print)
    except PreflightFailed as exc:
        err_console.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(2) from None
    except (StageFailed, DataError, QuantizeError) as exc:
        err_console.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(1) from None
    for name, folder in sorted(rd.record("export").outputs.items()):
        console.print(f"{name}: {folder}")
    console.print(f"report: {_write_report(rd, f'{r.name} ({profile})')}")


@app.command()
def push(
    recipe: Path,
    model: str = typer.Option(..., "--model", help="An exported model: export/<model>/"),
    repo: str = typer.Option(..., "--repo", help="ORG/NAME on the Hub"),
    private: bool = typer.Option(False, "--private", help="Create the repo private"),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be sent; send nothing"),
    profile: str = ProfileOpt,
    overrides: list[str] = SetOpt,
    runs_dir: Path = RunsOpt,
) -> None:
    """Upload an exported model folder (weights, tokenizer, model card) to the Hugging Face Hub.
    The token is read from HF_TOKEN and never printed."""
    r = _load(recipe, profile, overrides)
    from verticalft.hub_push import PushError, files_to_send, token_from_env
    from verticalft.hub_push import push as push_folder
    from verticalft.pipeline import run_dir_for

    rd = run_dir_for(r, profile, runs_dir)
    folder = rd.output("export", model) if rd.manifest_path.exists() and rd.is_done("export") else None
    if not folder:
        done = rd.record("export").outputs if rd.manifest_path.exists() and rd.is_done("export") else {}
        err_console.print(
            f"[bold red]error[/]: no exported model '{model}' in {rd.root}"
            + (
                f"; exported: {', '.join(sorted(done))}"
                if done
                else f"; run `verticalft export {recipe}` first"
            )
        )
        raise typer.Exit(2)
    try:
        files = files_to_send(Path(folder))
    except PushError as exc:
        err_console.print(f"[bold red]error[/]: {exc}")
        raise typer.Exit(2) from None
    total = sum(f.bytes for f in files)
    console.print(
        f"{'would upload' if dry_run else 'uploading'} {folder} → https://huggingface.co/{repo} "
        f"({'private' if private else 'public'}), {len(files)} files, {total / 1e6:,.1f} MB:"
    )
    for f in files:
        console.print(f"  {f.path}  {f.bytes / 1e6:,.3f} MB")
    if dry_run:
        console.print(
            f"token: {'HF_TOKEN is set' if token_from_env() else 'HF_TOKEN is NOT set (needed to push)'}"
        )
        return
    try:
        url = push_folder(Path(folder), repo, private)
    except PushError as exc:
        err_console.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"[green]pushed[/]: {url}")


@app.command()
def route(
    recipe: Path, profile: str = ProfileOpt, overrides: list[str] = SetOpt, runs_dir: Path = RunsOpt
) -> None:
    """Decide the cascade (student first, escalate when unsure) from the eval answers and prices;
    no GPU. Try other targets with e.g. --set route.target='{max_usd_per_m: 0.5}'."""
    r = _load(recipe, profile, overrides)
    from verticalft.pipeline import StageFailed, run_dir_for, run_recipe

    rd = run_dir_for(r, profile, runs_dir)
    missing = [s for s in ("eval", "cost") if rd.record(s).status != "done"]
    if missing:
        err_console.print(
            f"[bold red]error[/]: route needs a finished {' and '.join(missing)} stage in {rd.root}; "
            f"run `verticalft run {recipe} --profile {profile}` first"
        )
        raise typer.Exit(1)
    try:
        run_recipe(r, rd, only=["cost", "route"], force=["cost", "route"], echo=console.print)
    except StageFailed as exc:
        err_console.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"report: {_write_report(rd, f'{r.name} ({profile})')}")


@app.command()
def status(
    recipe: Path, profile: str = ProfileOpt, overrides: list[str] = SetOpt, runs_dir: Path = RunsOpt
) -> None:
    """Which stages are done, with their key metrics."""
    from verticalft.pipeline import enabled_stages, run_dir_for, stage_fingerprints, stage_state

    r = _load(recipe, profile, overrides)
    rd = run_dir_for(r, profile, runs_dir)
    stages = enabled_stages(r)
    fps = stage_fingerprints(r, stages)
    table = Table(title=f"{r.name} ({profile}) — {rd.root}")
    for col in ("stage", "status", "wall time", "key metrics"):
        table.add_column(col)
    for s in stages:
        rec = rd.record(s)
        state = stage_state(rd, stages, s, fps[s])
        table.add_row(
            s, state, f"{rec.wall_time_s:.1f}s" if rec.wall_time_s else "", _key_metrics(rec.metrics)
        )
    console.print(table)


def _write_report(rd: RunDir, title: str) -> str:
    """report.md, or exit 1 naming the manifest key the metrics contract misses (a run written by
    another version of the toolkit), instead of a traceback."""
    from verticalft.metrics import MetricsError
    from verticalft.report import write_report

    try:
        return write_report(rd, title)
    except MetricsError as exc:
        err_console.print(f"[bold red]error[/]: cannot build the report: {exc}", highlight=False)
        raise typer.Exit(1) from None


def _key_metrics(m: dict) -> str:
    parts = []
    if m.get("heldout_perplexity_before") is not None:
        parts.append(f"ppl {m['heldout_perplexity_before']:.1f}→{m['heldout_perplexity_after']:.1f}")
    for key in ("eval_before", "eval_after"):
        if isinstance(m.get(key), dict):
            parts.append(f"{key.replace('eval_', 'score ')} {m[key]['score']:.3f}")
    if m.get("reward_accuracy") is not None:
        parts.append(f"reward acc {m['reward_accuracy']:.3f}")
    if m.get("last_loss") is not None:
        parts.append(f"loss {m['first_loss']:.3f}→{m['last_loss']:.3f}")
    models = m.get("models")
    models = models if isinstance(models, dict) else {}
    for name, x in models.items():  # eval: score; bench: peak tok/s; cost: $/1M
        if isinstance(x.get("domain"), dict):
            parts.append(f"{name} {x['domain']['score']:.3f}")
        elif x.get("sweep"):
            parts.append(f"{name} {max(p['output_throughput'] or 0 for p in x['sweep']):.0f} tok/s")
        elif x.get("effective_usd_per_m") is not None:
            parts.append(f"{name} ${x['effective_usd_per_m']:.3g}/1M")
    return ", ".join(parts)


@app.command()
def curate(
    recipe: Path,
    profile: str = ProfileOpt,
    executor: str = typer.Option(
        None, "--executor", help="local (process pool) or ray; default: the recipe's"
    ),
    workers: int = typer.Option(None, "--workers", help="Parallel workers (default: every core)"),
    force: bool = typer.Option(False, "--force", help="Curate again even when done and unchanged"),
    overrides: list[str] = SetOpt,
    runs_dir: Path = RunsOpt,
) -> None:
    """Run only the curate stage: raw sources → curated corpus + SFT/DPO sets + report.

    The executor does not change the result (local and Ray write identical bytes), so switching it
    does not invalidate the stages after curate.
    """
    extra = [f"stages.curate.executor={executor}"] if executor else []
    extra += [f"stages.curate.num_workers={workers}"] if workers else []
    r = _load(recipe, profile, [*(overrides or []), *extra])
    if r.stages.curate is None:
        err_console.print(f"[bold red]error[/]: {recipe} has no stages.curate section")
        raise typer.Exit(2)
    from verticalft.data import DataError
    from verticalft.pipeline import StageFailed, run_dir_for, run_recipe

    rd = run_dir_for(r, profile, runs_dir)
    try:
        run_recipe(r, rd, only=["curate"], until="curate", force=force, echo=console.print)
    except (StageFailed, DataError) as exc:
        err_console.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"report: {rd.output('curate', 'report')}")


@app.command()
def preview(
    recipe: Path,
    profile: str = ProfileOpt,
    overrides: list[str] = SetOpt,
    n: int = typer.Option(2, "-n", help="Examples per set"),
    runs_dir: Path = RunsOpt,
) -> None:
    """Show N training examples per set as the trainers will see them: the rendered chat template,
    the trained (assistant) tokens highlighted, token counts. Run it first on new data."""
    from verticalft.data import DataError
    from verticalft.preview import corpus_example, preference_example, sft_example

    r = _load(recipe, profile, overrides)
    try:
        tokenizer = _preview_tokenizer(r, profile, runs_dir)
    except (OSError, ValueError, RuntimeError) as exc:
        err_console.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(2) from None
    kwargs = r.models.chat_template_kwargs
    try:
        # every source of a set: each file's format renders on its own (weights do not matter here)
        if (sft := r.stages.sft) is not None:
            for set_source in r.data.sft or []:
                rows = _first_rows(set_source, "sft", n)
                console.rule(f"sft: {set_source.path} (max_length {sft.max_length})")
                for i, row in enumerate(rows):
                    shown = sft_example(tokenizer, row["messages"], sft.max_length, kwargs, row.get("tools"))
                    _print_rendered(f"example {i + 1}", shown)
        if (dpo := r.stages.dpo) is not None:
            for set_source in r.data.preferences or []:
                rows = _first_rows(set_source, "preferences", n)
                console.rule(f"preferences: {set_source.path} (max_length {dpo.max_length})")
                for i, row in enumerate(rows):
                    parts = preference_example(
                        tokenizer, row["prompt"], row["chosen"], row["rejected"], dpo.max_length, kwargs
                    )
                    for name, shown in parts.items():
                        _print_rendered(f"example {i + 1} {name}", shown)
        if r.data.corpus and (cpt := r.stages.cpt) is not None:
            source = r.data.corpus[0]
            rows = _first_rows(source, None, n)
            console.rule(f"corpus: {source.path} (max_length {cpt.max_length})")
            for i, row in enumerate(rows):
                _print_rendered(
                    f"document {i + 1}",
                    corpus_example(tokenizer, row[source.text_field], cpt.max_length),
                    400,
                )
    except DataError as exc:
        err_console.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(2) from None


def _preview_tokenizer(r: Recipe, profile: str, runs_dir: Path) -> object:
    """The run's tokenizer with its training template; tiny models are built first if needed."""
    from verticalft.models import is_tiny, load_tokenizer
    from verticalft.pipeline import run_dir_for, run_recipe
    from verticalft.stages.base import StageContext

    rd = run_dir_for(r, profile, runs_dir)
    if is_tiny(r.models.teacher) and not rd.is_done("tiny_models"):
        run_recipe(r, rd, until="tiny_models", only=["tiny_models"], echo=console.print)
    path = StageContext(r, rd, "sft").resolve_model(r.models.teacher)
    return load_tokenizer(
        path, r.models.chat_template, require_mask=r.stages.sft is not None, prefix_masks=True
    )


def _first_rows(source: Source, kind: Kind | None, n: int) -> list[dict]:
    """The first `n` rows of a source in canonical form (any supported format, `data.load_set`);
    `kind` None: a text corpus."""
    from verticalft.data import load_set, load_source

    ds = load_set(source, kind) if kind else load_source(source, (source.text_field,))
    return ds.select(range(min(n, len(ds)))).to_list()


def _print_rendered(title: str, shown: Rendered, limit: int | None = None) -> None:
    """Trained tokens in green on a terminal, between ⟦ ⟧ when piped (no colour to see)."""
    from rich.markup import escape

    head = f"[bold]{title}[/]: {shown.tokens} tokens, {shown.trained} trained"
    head += " [red](longer than max_length: the tail is cut)[/]" if shown.truncated else ""
    console.print(head + (f" — {shown.note}" if shown.note else ""))
    text, plain = "", not console.is_terminal
    for chunk, trained in shown.spans:
        chunk = chunk if limit is None or len(text) < limit else ""
        if not chunk:
            continue
        if trained:
            text += f"⟦{escape(chunk)}⟧" if plain else f"[green]{escape(chunk)}[/]"
        else:
            text += escape(chunk)
    if limit is not None and sum(len(c) for c, _ in shown.spans) > limit:
        text = text[: limit + 200] + " …"
    console.print(text, highlight=False)


@app.command("tiny-models")
def tiny_models_cmd(
    recipe: Path = typer.Argument(Path("recipes/finance.yaml")), runs_dir: Path = RunsOpt
) -> None:
    """Build the tiny tokenizer + teacher + students for a recipe (what PROFILE=tiny does first)."""
    from verticalft.pipeline import run_dir_for, run_recipe

    r = _load(recipe, "tiny", [])
    rd = run_dir_for(r, "tiny", runs_dir)
    run_recipe(r, rd, until="tiny_models", echo=console.print)
    for name, path in rd.record("tiny_models").outputs.items():
        console.print(f"  {name}: {path}")


@app.command()
def new(domain: str, template: str = typer.Option("finance", help="Recipe to copy")) -> None:
    """Scaffold recipes/<domain>.yaml and data_pipelines/<domain>/ from an existing vertical."""
    from verticalft.scaffold import scaffold_vertical

    try:
        created = scaffold_vertical(domain, template, Path.cwd())
    except ValueError as exc:
        err_console.print(f"[bold red]error[/]: {exc}")
        raise typer.Exit(2) from None
    for path in created:
        console.print(f"created {path}")
    console.print(
        f"next: edit recipes/{domain}.yaml and data_pipelines/{domain}/build_sample.py, then "
        f"`make {domain}-dpo PROFILE=tiny`"
    )


@app.command()
def reference() -> None:
    """Print the recipe reference (Markdown: every block and key, type, default, description);
    docs/RECIPE.md is this output."""
    from verticalft.recipe_reference import reference_markdown

    sys.stdout.write(reference_markdown())  # plain: rich would read `[…]` in the page as markup


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
