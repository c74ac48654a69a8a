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
              help="Treat every request as TLS: Secure cookies and HSTS (set it behind a TLS proxy "
                   "that is not --trusted-proxy). Requests whose scheme is https get them anyway.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Serve HTTPS with this certificate (PEM; needs --tls-key).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The private key of --tls-cert (PEM).")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDRESS",
              help="A proxy address (or CIDR) whose X-Forwarded-For/-Proto headers are believed "
                   "(repeatable). Without it the client address is the TCP peer's.")
@click.option("--max-body", default=1 << 20, show_default=True,
              help="Largest request body in bytes; larger ones get 413 before they are read.")
@click.option("--max-hashes", default=4, show_default=True,
              help="Password checks (argon2, 64 MiB each) running at once; more logins wait, then 503.")
@click.option("--login-free-tries", default=3, show_default=True,
              help="Wrong passwords in a row (per account) before logins slow down.")
@click.option("--login-delay", default=1.0, show_default=True,
              help="Seconds to wait after the first slowed try; doubles per failure.")
@click.option("--login-max-delay", default=30.0, show_default=True, help="Longest wait between tries.")
@click.option("--login-lockout-after", default=10, show_default=True,
              help="Wrong passwords in a row that lock the account (an address: twice as many).")
@click.option("--login-lockout", default=900.0, show_default=True, help="Seconds a lock lasts.")
@click.option("--session-idle", default=12 * 3600, show_default=True,
              help="Seconds without a request after which a session ends.")
@click.option("--session-lifetime", default=24 * 3600, show_default=True,
              help="Seconds after login after which a session ends, however active.")
@click.option("--training-mix", default="", metavar="CLASS=COUNT,...",
              help="The champion's training photos per class (e.g. food=470,human=415): the "
                   "reference bar of the Stats page's class mix.")
@click.option("--stats-days", default=14, show_default=True, help="Days the Stats charts cover.")
@click.pass_context
def review_ui(ctx: click.Context, db_url, model_name, host, port, low_threshold, page_size, routes,
              classes, thumb_size, thumb_cache, secret_file, secure_cookies, tls_cert, tls_key,
              trusted_proxies, max_body, max_hashes, login_free_tries, login_delay, login_max_delay,
              login_lockout_after, login_lockout, session_idle, session_lifetime, training_mix,
              stats_days) -> None:
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
    from clazzify.review.throttle import ThrottleConfig

    _quiet_libraries()
    secret = ""
    if secret_file is not None:
        secret = (secret_file.read_text().strip().splitlines() or [""])[0]
        if len(secret) < 32:
            raise click.BadParameter(f"{secret_file} holds under 32 characters: write a long random "
                                     "line, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`",
                                     param_hint="--secret-file")
    if (tls_cert is None) != (tls_key is None):
        raise click.BadParameter("give both --tls-cert and --tls-key, or neither", param_hint="--tls-cert")
    throttle = ThrottleConfig(
        free_tries=login_free_tries, base_delay_s=login_delay, max_delay_s=login_max_delay,
        lock_after=login_lockout_after, lockout_s=login_lockout,
    )
    from clazzify.scoring.drift_rules import parse_class_counts
    from clazzify.scoring.drift_rules import training_mix as shares

    mix = tuple(shares(parse_class_counts(training_mix)).items()) if training_mix else ()
    config = ReviewConfig(
        model_name=model_name, low_threshold=low_threshold, page_size=page_size, routes=routes,
        classes=tuple(c.strip() for c in classes.split(",") if c.strip()), thumb_size=thumb_size,
        thumb_cache=thumb_cache, secret_key=secret, https_only=secure_cookies, throttle=throttle,
        max_hashes=max_hashes, max_body_bytes=max_body, session_idle_s=session_idle,
        session_lifetime_s=session_lifetime, training_mix=mix, stats_days=stats_days,
    )
    ensure_port_free(host, port, "--port")
    repo = _open_repo(db_url)
    from clazzify.review.users import list_users

    if not list_users(repo.engine):
        click.echo("no review users yet: add one with `clazzify review-ui users add NAME --role admin`",
                   err=True)
    scheme = "https" if tls_cert else "http"
    click.echo(f"review page on {scheme}://{host}:{port} (database {repo.url})", err=True)
    # The client address the login throttle counts is uvicorn's: the TCP peer, or, only for
    # a --trusted-proxy peer, the address that proxy puts in X-Forwarded-For.
    uvicorn.run(create_app(repo, config), host=host, port=port, log_level="warning",
                proxy_headers=bool(trusted_proxies), forwarded_allow_ips=list(trusted_proxies) or None,
                server_header=False,
                ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None)


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
    """Create USERNAME (or set a new password and role if it exists, ending its sessions)."""
    from clazzify.review.users import add_user

    password = _read_password(username, password_stdin)
    _quiet_libraries()
    repo = _open_repo(ctx.obj["db_url"])
    user = add_user(repo.engine, username, password, role)
    click.echo(f"{user.username} ({user.role}) can log in to the review page")


def _read_password(username: str, password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return click.prompt(f"password for {username}", hide_input=True, confirmation_prompt=True)


@users_group.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of stdin instead of prompting.")
@click.pass_context
def users_passwd(ctx: click.Context, username, password_stdin) -> None:
    """Give USERNAME a new password; every open session of it ends at its next request."""
    from clazzify.review.users import set_password

    password = _read_password(username, password_stdin)
    _quiet_libraries()
    set_password(_open_repo(ctx.obj["db_url"]).engine, username, password)
    click.echo(f"new password for {username}; their open sessions have ended")


@users_group.command("logout")
@click.argument("username")
@click.pass_context
def users_logout(ctx: click.Context, username) -> None:
    """End every open session of USERNAME (the password stays)."""
    from clazzify.review.users import end_sessions

    _quiet_libraries()
    end_sessions(_open_repo(ctx.obj["db_url"]).engine, username)
    click.echo(f"every session of {username} has ended")


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

