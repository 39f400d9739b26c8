"""`edgekit agent`: the agent run on a device, and the token its clients send."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli.console import out

# Library modules are imported inside the commands, so that `edgekit --help` loads none of them.

app = typer.Typer(no_args_is_help=True, help="The on-device agent: builds and measures engines on the device for a host.")


@app.command("serve")
def agent_serve(
    token_file: Annotated[Path, typer.Option("--token-file", help="File holding the token clients must send (`edgekit agent token FILE`).")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface, reachable from the network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8700,
    workdir: Annotated[Path, typer.Option(help="Where jobs, their files and results are kept.")] = Path("~/.edgekit/agent"),
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload (all of one job's files) taken, in MiB.")] = 256,
    max_queue: Annotated[int, typer.Option(help="Most jobs waiting at once; more are refused (503) until some have run.")] = 64,
    keep_files: Annotated[int, typer.Option(help="Ended jobs whose files stay downloadable; older ones keep only their state and result.")] = 200,
) -> None:
    """Run the agent on this device until interrupted: jobs from hosts, run one at a time with the local runtimes."""
    from edgekit.agent.server import serve

    serve(host=host, port=port, token_file=token_file, workdir=workdir, max_upload_mb=max_upload_mb, max_queue=max_queue,
          keep_files=keep_files)


@app.command("token")
def agent_token(
    file: Annotated[Path, typer.Argument(help="Where to write the token (mode 0600).")],
    force: Annotated[bool, typer.Option("--force", help="Replace the token in an existing file.")] = False,
) -> None:
    """Write a new random token for `edgekit agent serve --token-file` and its clients."""
    from edgekit.agent.security import new_token_file

    path = new_token_file(file, force=force)
    out.print(f"wrote a new token to {path} (mode 0600)")
