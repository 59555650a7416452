"""``mlsuite pipeline ...``: run a service's retraining pipeline once.

Loaded lazily by ``mlplatform.cli`` (``mlsuite --help`` stays fast). Exit status: 0 when
a candidate was registered, 3 when the gate refused (nothing registered), 2 on bad usage.
"""

from __future__ import annotations

import json

import click

from mlplatform.config import get_settings
from mlplatform.logs import configure_logging
from mlplatform.pipeline.config import PipelineConfig
from mlplatform.pipeline.plugin import service_names

__all__ = ["pipeline"]


@click.group("pipeline", context_settings={"help_option_names": ["-h", "--help"]})
def pipeline() -> None:
    """Retraining: ETL, data-quality checks, train, compare with production, register a candidate."""


@pipeline.command("run")
@click.argument("service")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--tolerance", type=click.FloatRange(0.0, 1.0), default=None,
              help="How far (absolute) the candidate's primary metric may trail production's "
                   "(default: MLSUITE_PIPELINE_TOLERANCE, else 0.01).")
@click.pass_context
def run(ctx: click.Context, service: str, as_json: bool, tolerance: float | None) -> None:
    """Run SERVICE's pipeline (recommender or fraud) once and report each step.

    Registers the new version under the `candidate` alias only when every data-quality
    check passes and it is no worse than production on data neither trained on; never
    moves `production`. Exit status 0: registered, 3: refused, 2: bad usage.
    """
    from mlplatform.pipeline.run import run_pipeline

    known = service_names()
    if service not in known:
        raise click.BadParameter(f"unknown service {service!r}; expected one of "
                                 f"{', '.join(known) or '(none installed)'}",
                                 param_hint="SERVICE")
    settings = get_settings()
    configure_logging(settings.log_level)
    config = PipelineConfig.from_env()
    if tolerance is not None:
        config = config.with_(tolerance=tolerance)
    report = run_pipeline(settings, service, config=config)
    click.echo(json.dumps(report.to_dict(), indent=2, default=str) if as_json
               else report.format_text())
    ctx.exit(report.exit_code)
