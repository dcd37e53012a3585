"""The `likeness` command line's commands, in the order `likeness --help` lists them."""

from __future__ import annotations

import typer

from likeness.cli import batch, deploy, estimate, info, produce, put, render, train

# Locals in tracebacks could show secrets from the settings.
app = typer.Typer(
    help="Likeness: consistent AI characters from one reference photo.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command()(produce.produce)
app.command()(produce.dataset)
app.command()(train.train)
app.command("render")(render.render_command)
app.command()(batch.batch)
app.command()(info.doctor)
app.command("deploy")(deploy.deploy_command)
app.command("run")(deploy.run_command)
app.command()(deploy.pull)
app.command()(put.put)
app.command()(estimate.estimate)
app.command()(info.profiles)
app.command("sample-photo")(info.sample_photo)
