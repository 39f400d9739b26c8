"""`edgekit bundle`: the keys that sign a fleet's bundles, signatures, and their verification."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli.console import out, print_json
from edgekit.cli.options import JsonOut
from edgekit.errors import BadInput

# Library modules are imported inside the commands, so that `edgekit --help` loads none of them.

app = typer.Typer(no_args_is_help=True, help="Signed bundles: keys, signatures, verification.")


@app.command("keygen")
def bundle_keygen(
    key: Annotated[Path, typer.Argument(help="Private key file to write (the public key goes to KEY.pub).")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """A new ed25519 signing key pair."""
    from edgekit.fleet.bundle import keygen

    private, public = keygen(key, force=force)
    out.print(f"wrote {private} (private, mode 0600) and {public} (public)")


@app.command("sign")
def bundle_sign(
    file: Annotated[Path, typer.Argument(help="The bundle (.tar) to sign.")],
    key: Annotated[Path, typer.Option("--key", help="ed25519 private key.")],
) -> None:
    """FILE.sig: a detached ed25519 signature over the whole file (after checking its contents)."""
    from edgekit.fleet.bundle import check_contents, sign

    check_contents(file)
    out.print(f"wrote {sign(file, key)}")


@app.command("verify")
def bundle_verify(
    file: Annotated[Path, typer.Argument(help="The bundle (.tar); its signature is FILE.sig.")],
    key: Annotated[Path | None, typer.Option("--key", help="Public (or private) ed25519 key.")] = None,
    fleet: Annotated[Path | None, typer.Option("--fleet", help="Use this fleet manifest's signing key.")] = None,
    as_json: JsonOut = False,
) -> None:
    """Check the signature, then every file against manifest.json's sha256; exit 2 if anything differs."""
    from edgekit.fleet.bundle import verify

    if key is None and fleet is None:
        raise BadInput("give the key to verify with: --key KEY.pub, or --fleet fleet.yaml")
    if key is None:
        from edgekit.fleet.manifest import load_fleet

        private = load_fleet(fleet).key_path()
        key = private.with_name(private.name + ".pub") if private.with_name(private.name + ".pub").exists() else private
    manifest = verify(file, key)
    if as_json:
        print_json(manifest)
        return
    count = len(manifest["files"])
    target = manifest.get("target")
    out.print(f"{file.name}: signature good; {count} file{'s' if count != 1 else ''}, each matching its sha256 "
              f"({manifest.get('class')} {manifest.get('version')} for {target.get('name') if isinstance(target, dict) else target})")
