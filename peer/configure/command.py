"""`pollen configure RUNTIME`: point a container runtime's pulls at the local node."""

from __future__ import annotations

from pathlib import Path

import click

from peer.config import DEFAULT_HTTP
from peer.configure import containerd
from peer.configure.files import ConfigureError, apply, apply_undo, backup_of
from peer.configure.plan import RUNTIMES, Plan, Request, installed, plan, plan_undo


@click.command()
@click.argument("runtime", type=click.Choice(RUNTIMES))
@click.option(
    "--endpoint",
    default=f"http://{DEFAULT_HTTP}",
    show_default=True,
    help="The node's registry address (its --http) as the runtime reaches it.",
)
@click.option(
    "--registry",
    "registries",
    multiple=True,
    default=["docker.io"],
    show_default=True,
    help="A registry whose pulls go through the node (repeatable). docker: docker.io only; "
    "podman, crio: one, the node's --default-upstream.",
)
@click.option(
    "--all-registries",
    is_flag=True,
    help='Every registry (containerd: the _default hosts.toml; k3s, rke2: the "*" mirror).',
)
@click.option(
    "--config-file",
    help="The runtime's file [default: /etc/containerd/config.toml, /etc/docker/daemon.json, "
    "/etc/containers/registries.conf (its .d directory gets the drop-in), "
    "/etc/rancher/{k3s,rke2}/registries.yaml].",
)
@click.option(
    "--hosts-dir",
    default=containerd.DEFAULT_HOSTS_DIR,
    show_default=True,
    help="containerd: the config_path to set when config.toml names none (an existing one "
    "is kept and used).",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Where the host's / is (an init container that mounts it at /host).",
)
@click.option("--dry-run", is_flag=True, help="Show the changes as a diff; change nothing.")
@click.option(
    "--undo", is_flag=True, help="Put back every file an earlier configure of RUNTIME changed."
)
@click.option(
    "--if-installed",
    is_flag=True,
    help="Do nothing (and succeed) when RUNTIME is not installed on the host: a DaemonSet's "
    "init container on a node that runs another runtime.",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --undo: put back the originals even of files changed since pollen wrote them "
    "(those changes are lost).",
)
def configure(
    runtime: str,
    endpoint: str,
    registries: tuple[str, ...],
    all_registries: bool,
    config_file: str | None,
    hosts_dir: str,
    root: Path,
    dry_run: bool,
    undo: bool,
    if_installed: bool,
    force: bool,
) -> None:
    """Make RUNTIME pull through this node, with the registry itself as the fallback.

    RUNTIME is containerd (config.toml's registry config_path, and a hosts.toml per
    registry with the node first), docker (daemon.json registry-mirrors), podman or crio
    (a drop-in under registries.conf.d; registries.conf is never rewritten), k3s or rke2
    (registries.yaml mirrors; configs untouched).

    Running it again changes nothing more. The first change to each file keeps the original
    as FILE.pollen-backup (FILE.pollen-created for a file pollen made), which --undo puts
    back.
    """
    request = Request(
        runtime,
        endpoint,
        registries,
        all_registries,
        config_file,
        hosts_dir,
        root,
        force,
    )
    try:
        missing = installed(request) if if_installed else None
        if missing is not None:
            click.echo(f"{runtime} is not installed here ({missing} is missing): nothing to do")
            return
        result = plan_undo(request) if undo else plan(request)
        _carry_out(result, dry_run=dry_run, undo=undo)
    except ConfigureError as exc:
        raise click.ClickException(str(exc)) from exc


def _carry_out(result: Plan, *, dry_run: bool, undo: bool) -> None:
    changing = [c for c in result.changes if c.changes]
    if undo and not result.changes:
        click.echo("nothing to undo: no file has a backup from pollen configure")
        return
    for change in result.changes:
        if not change.changes:
            click.echo(f"{change.path}: already configured")
        elif dry_run:
            click.echo(change.diff(), nl=False)
        elif undo:
            apply_undo(change)
            click.echo(f"{change.path}: put back" if change.after else f"{change.path}: removed")
        else:
            kept = backup_of(change.path).exists()
            apply(change)
            backup = backup_of(change.path)
            if change.before is None:
                click.echo(f"{change.path}: written")
            else:
                word = "kept" if kept else "saved"
                click.echo(f"{change.path}: changed (original {word} in {backup})")
    if dry_run:
        click.echo(f"dry run: {len(changing)} file(s) would change, none did")
    elif changing and result.after:
        click.echo(result.after)
