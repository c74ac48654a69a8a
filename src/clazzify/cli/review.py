"""The review web app's commands: `clazzify review-ui` and `clazzify review-ui users ...`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from clazzify.cli.main import main
from clazzify.cli.scoring import _db_option, _model_option, _open_repo, _quiet_libraries
from clazzify.core.errors import ensure_port_free


def _route(_ctx, _param, values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    routes = []
    for value in values:
        name, sep, team = value.partition("=")
        if not sep or not name.strip() or not team.strip():
            raise click.BadParameter(f"{value!r}: expected CLASS=TEAM, e.g. human='photo moderation'")
        routes.append((name.strip(), team.strip()))
    return tuple(routes) or (("human", "photo moderation"), ("menu", "content team"))


@main.group("review-ui", invoke_without_command=True)
@_db_option
@_model_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (put a TLS proxy in front before leaving loopback).")
@click.option("--port", default=8090, show_default=True)
@click.option("--low-threshold", default=0.6, show_default=True,
              help="Top probabilities below this go to the low-confidence queue.")
@click.option("--page-size", default=100, show_default=True, help="Photos per page.")
@click.option("--route", "routes", multiple=True, callback=_route, metavar="CLASS=TEAM",
              help="Which team a class's queue goes to (repeatable). "
                   "Default: human='photo moderation', menu='content team'.")
@click.option("--classes", default="", help="Comma-separated label choices in key order "
              "(default: the classes the model scored).")
@click.option("--thumb-size", default=256, show_default=True, help="Thumbnail size in px.")
@click.option("--thumb-cache", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".clazzify/thumbs"), show_default=True, help="Folder of cached thumbnails.")
@click.option("--secret-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              envvar="CLAZZIFY_REVIEW_SECRET_FILE",
              help="File whose first line signs session cookies (default: a random key, so "
                   "sessions end when the server restarts).")
@click.option("--secure-cookies/--no-secure-cookies", default=False, show_default=True,
              help="Send cookies only over HTTPS (set it behind a TLS proxy).")
@click.pass_context
def review_ui(ctx: click.Context, db_url, model_name, host, port, low_threshold, page_size, routes,
              classes, thumb_size, thumb_cache, secret_file, secure_cookies) -> None:
    """Serve the moderators' review page (queues, keyboard labelling, stats, export).

    Moderators log in with accounts made by `clazzify review-ui users add NAME`; every
    decision goes to the manual_labels table with a row in label_history (who, when, old
    and new label). Open http://127.0.0.1:8090 after starting it.
    """
    ctx.ensure_object(dict)
    ctx.obj["db_url"] = db_url
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from clazzify.review.app import ReviewConfig, create_app

    _quiet_libraries()
    secret = ""
    if secret_file is not None:
        secret = (secret_file.read_text().strip().splitlines() or [""])[0]
        if len(secret) < 32:
            raise click.BadParameter(f"{secret_file} holds under 32 characters: write a long random "
                                     "line, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`",
                                     param_hint="--secret-file")
    config = ReviewConfig(
        model_name=model_name, low_threshold=low_threshold, page_size=page_size, routes=routes,
        classes=tuple(c.strip() for c in classes.split(",") if c.strip()), thumb_size=thumb_size,
        thumb_cache=thumb_cache, secret_key=secret, https_only=secure_cookies,
    )
    ensure_port_free(host, port, "--port")
    repo = _open_repo(db_url)
    from clazzify.review.users import list_users

    if not list_users(repo.engine):
        click.echo("no review users yet: add one with `clazzify review-ui users add NAME --role admin`",
                   err=True)
    click.echo(f"review page on http://{host}:{port} (database {repo.url})", err=True)
    uvicorn.run(create_app(repo, config), host=host, port=port, log_level="warning",
                proxy_headers=False, server_header=False)


@review_ui.group("users")
def users_group() -> None:
    """Manage the review page's accounts (moderators label; admins also export)."""


@users_group.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["moderator", "admin"]), default="moderator", show_default=True)
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of stdin instead of prompting.")
@click.pass_context
def users_add(ctx: click.Context, username, role, password_stdin) -> None:
    """Create USERNAME (or set a new password and role if it exists)."""
    from clazzify.review.users import add_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt(f"password for {username}", hide_input=True, confirmation_prompt=True)
    _quiet_libraries()
    repo = _open_repo(ctx.obj["db_url"])
    user = add_user(repo.engine, username, password, role)
    click.echo(f"{user.username} ({user.role}) can log in to the review page")


@users_group.command("remove")
@click.argument("username")
@click.pass_context
def users_remove(ctx: click.Context, username) -> None:
    """Delete USERNAME; their decisions stay in the label history."""
    from clazzify.review.users import remove_user

    _quiet_libraries()
    repo = _open_repo(ctx.obj["db_url"])
    remove_user(repo.engine, username)
    click.echo(f"removed {username}")


@users_group.command("list")
@click.pass_context
def users_list(ctx: click.Context) -> None:
    """List the accounts and their roles."""
    from clazzify.review.users import list_users

    for user in list_users(_open_repo(ctx.obj["db_url"]).engine):
        click.echo(f"{user.username}\t{user.role}")

