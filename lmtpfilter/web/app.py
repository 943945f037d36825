"""`lmtpfilter web`: the quarantine self-service page (issue 19), a Starlette application.

Users log in with their mail password (auth.py: IMAP LOGIN at the delivery server), see the
quarantined mail of their own addresses (access.py), read a plain-text preview
(preview.py), release it to themselves through the same code path and audit record as
`lmtpfilter quarantine release` (release.py), delete it, and choose their spam destiny
(settings.py); a notification's release link (links.py) leads to a confirmation page.

Safety, route by route: every POST carries the session's CSRF token (the release link's
confirmation form a token derived from the link) and is refused with 403 without it; a
message the user may not see is a 404, exactly as one that does not exist; nothing a client
sees carries an exception's text (errors are logged, the page says something generic); the
pages are server-rendered HTML, autoescaped, with a Content-Security-Policy that allows no
script at all. The session is Starlette's signed cookie (HttpOnly, SameSite=Strict, Secure
unless [web] allow_plain_http), holding the login and its time, never the password.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import hmac
import logging
import signal
import socket
import time
import weakref
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import jinja2
from prometheus_client import CollectorRegistry, Counter, generate_latest
from sqlalchemy import func, literal, or_, select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Config
from ..quarantine import (
    InvalidQuarantineId,
    NotInQuarantine,
    QuarantineBusy,
    QuarantineStore,
    delete_message,
    find,
    open_quarantine,
    validate_id,
)
from ..queries import like_escape
from ..release import ReleaseError, release
from ..store import MessageRecord, QuarantineRecord, ReleaseLinkUse, Store
from . import access
from .access import Viewer
from .auth import (
    PasswordCheck,
    PasswordCheckUnavailable,
    RateLimiter,
    csrf_ok,
    csrf_token,
    login_address,
    password_checker,
)
from .links import NOT_VALID, USED, InvalidLink, LinkClaim, ReleaseLinks, load_key
from .preview import Preview, one_line, preview
from .settings import SettingsError, current, save, score

log = logging.getLogger("lmtpfilter.web")

HERE = Path(__file__).parent
PAGE_SIZE = 50  # messages per page of the list
BULK_LIMIT = 200  # messages per bulk action: each release is an LMTP delivery
SEARCH_LIMIT = 200  # characters of an admin's search
MAX_PASSWORD = 1000  # characters

# ---- metrics --------------------------------------------------------------------------------

# The page's own registry: the web process has none of the filter's counters to show, and
# importing them into the default registry would serve them as zeros.
REGISTRY = CollectorRegistry(auto_describe=True)
LOGINS = Counter("lmtpfilter_web_logins_total",
                 "Logins on the web page: ok, failed (wrong address or password), limited "
                 "(refused by the rate limiter without asking the server)",
                 ["result"], registry=REGISTRY)
RELEASES = Counter("lmtpfilter_web_releases_total",
                   "Releases from the web page (via page or link): delivered when every "
                   "recipient's server said 2xx, else refused",
                   ["via", "result"], registry=REGISTRY)
for _result in ("ok", "failed", "limited"):
    LOGINS.labels(_result)
for _via in ("page", "link"):
    for _result in ("delivered", "refused"):
        RELEASES.labels(_via, _result)


def render_metrics() -> bytes:
    return generate_latest(REGISTRY)


# ---- messages the pages show ----------------------------------------------------------------

WRONG_PASSWORD = "Login failed: wrong address or password."
NOT_AN_ADDRESS = "Login failed: log in with your mail address, such as alice@example.org."
LIMITED = "Login refused: too many attempts, wait a few minutes and try again."
UNAVAILABLE = "The mail server cannot check passwords right now, try later."
HTTPS_ONLY = ("Logging in is refused: this page must be served over HTTPS (your password and "
              "session would cross the network in clear).")
BAD_CSRF = ("The form was refused: it was not sent from this site's page, or your session "
            "has expired. Go back, reload the page and try again.")
NOT_FOUND = "There is no such message in the quarantine, or it is not yours."
BUSY = "The quarantine is busy (the janitor is running); try again in a moment."
GONE = "The stored copy of this message is gone (expired by the janitor?)."
UNREADABLE = "The stored copy of this message cannot be read."

TITLES = {400: "Bad request", 403: "Refused", 404: "Not found", 405: "Not allowed",
          409: "Already done", 429: "Too many attempts", 500: "Internal error",
          503: "Try again later"}


class PageError(Exception):
    """A refusal shown as an error page: `text` is written for the user."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


# ---- the application ------------------------------------------------------------------------

@dataclass
class WebState:
    config: Config
    store: Store
    links: ReleaseLinks | None
    check: PasswordCheck
    limiter: RateLimiter
    templates: Jinja2Templates
    files: QuarantineStore
    wall_clock: Callable[[], float] = time.time
    # One release at a time per message in this process: a double click must not deliver
    # twice (release() refuses a second release of a row, but here a row is released per
    # recipient, with force; see access.py).
    locks: weakref.WeakValueDictionary[str, asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary)

    @property
    def delimiter(self) -> str:
        return self.config.policy.recipient_delimiter


def create_app(config: Config, store: Store, *, password_check: PasswordCheck | None = None,
               key: bytes | None = None, clock: Callable[[], float] = time.monotonic,
               wall_clock: Callable[[], float] = time.time) -> Starlette:
    """The page. `key` is [web] secret_key_file's content (read here unless given);
    `password_check` replaces the IMAP check in unit tests of other parts; `clock` drives
    the rate limiter and `wall_clock` the session lifetime, for tests."""
    web = config.web
    if key is None:
        if web.secret_key_file is None:
            raise ValueError("[web] secret_key_file: not set; `lmtpfilter web` needs a key")
        key = load_key(web.secret_key_file)
    links = (ReleaseLinks(key, web.base_url, web.release_link_lifetime)
             if web.base_url else None)
    state = WebState(config=config, store=store, links=links,
                     check=password_check or password_checker(web),
                     limiter=RateLimiter(web.login_attempts, web.login_window, clock),
                     templates=_templates(), files=open_quarantine(config.quarantine, store),
                     wall_clock=wall_clock)

    def bound(handler: Callable[[WebState, Request], Awaitable[Response]]
              ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(state, request)
            except _Redirect as exc:
                return RedirectResponse(exc.text, status_code=303)
            except PageError as exc:
                return _error_page(state, request, exc.status, exc.text)
            except HTTPException:  # Starlette's own (a form it cannot parse: 400): its page
                raise
            except Exception as exc:
                return _server_error(state, request, exc)
        return endpoint

    routes = [
        Route("/login", bound(login_page), methods=["GET"]),
        Route("/login", bound(login_post), methods=["POST"]),
        Route("/logout", bound(logout_post), methods=["POST"]),
        Route("/", bound(list_page), methods=["GET"]),
        Route("/m/{qid}", bound(detail_page), methods=["GET"]),
        Route("/m/{qid}/release", bound(release_post), methods=["POST"]),
        Route("/m/{qid}/delete", bound(delete_post), methods=["POST"]),
        Route("/bulk", bound(bulk_post), methods=["POST"]),
        Route("/settings", bound(settings_page), methods=["GET", "POST"]),
        Route("/r/{token}", bound(link_page), methods=["GET"]),
        Route("/r/{token}", bound(link_post), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    secure = not web.allow_plain_http
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=_session_key(key),
                   # __Host-: the browser keeps it only from HTTPS, for this host, path /.
                   session_cookie="__Host-lmtpfilter" if secure else "lmtpfilter",
                   max_age=int(web.session_lifetime), same_site="strict", https_only=secure),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        text = NOT_FOUND if status == 404 else TITLES.get(status, "Error") + "."
        return _error_page(state, request, status, text)

    async def server_error(request: Request, exc: Exception) -> Response:
        # Outside the routes (a middleware): Starlette logs it again after this page.
        return _server_error(state, request, exc)

    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={HTTPException: http_error, Exception: server_error})


def _server_error(state: WebState, request: Request, exc: Exception) -> Response:
    """The 500 page: the details go to the log, never to the client (a traceback or an
    exception's text could show paths, SQL or another user's data)."""
    log.error("web: %s %s failed", request.method, request.url.path,
              exc_info=(type(exc), exc, exc.__traceback__))
    return _error_page(state, request, 500, "Something went wrong on our side. The error was "
                       "logged; try again later.", session=False)


def _session_key(key: bytes) -> str:
    """The cookie's signing key, derived from the file's key: a cookie signature is never a
    valid link or form signature (links.py signs with the key under its own prefixes)."""
    return hmac.new(key, b"lmtpfilter web session v1", hashlib.sha256).hexdigest()


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["clean"] = _clean
    env.filters["size"] = human_size
    env.filters["when"] = _when
    return Jinja2Templates(env=env)


def _clean(value: object) -> str:
    """A value from the database or the message for a page (preview.one_line)."""
    return one_line(str(value))


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:  # SQLite hands back naive datetimes: they were stored as UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


class SecurityHeaders:
    """Headers on every response: no script, no framing, no referrer (a release link's token
    is in its URL), and no caching of pages that show mail."""

    HEADERS: ClassVar[tuple[tuple[bytes, bytes], ...]] = (
        (b"content-security-policy",
         b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
         b"frame-ancestors 'none'; base-uri 'none'"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-opener-policy", b"same-origin"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].removeprefix(scope.get("root_path", "")).startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(self.HEADERS)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


# ---- pieces the routes share -----------------------------------------------------------------

def _root(request: Request) -> str:
    """The path prefix the page is served under (uvicorn's root_path, from [web] base_url)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _render(state: WebState, request: Request, name: str, status: int = 200,
            session: bool = True, **context: Any) -> Response:
    who = _viewer(state, request) if session else None
    context.setdefault("viewer", who)
    context.setdefault("csrf", csrf_token(request.session) if who else "")
    context.setdefault("title", "")
    context.update(root=_root(request))
    return state.templates.TemplateResponse(request, name, context, status_code=status)


def _error_page(state: WebState, request: Request, status: int, text: str,
                session: bool = True) -> Response:
    return _render(state, request, "error.html", status=status,
                   session=session and "session" in request.scope,
                   title=TITLES.get(status, "Error"), error=text, code=status)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


SESSION_USER, SESSION_SINCE = "user", "since"


def _viewer(state: WebState, request: Request) -> Viewer | None:
    """Who is logged in, if anyone, for as long as [web] session_lifetime from the login
    (the cookie is re-sent on each response, so its own max_age alone would never end an
    active session)."""
    session = request.session
    user, since = session.get(SESSION_USER), session.get(SESSION_SINCE)
    if not isinstance(user, str) or not isinstance(since, (int, float)):
        return None
    age = state.wall_clock() - since
    if age > state.config.web.session_lifetime or age < -60:  # -60: clocks a little apart
        session.clear()
        return None
    return access.viewer(user, state.config.web.admins)


def _login_required(state: WebState, request: Request) -> Viewer:
    who = _viewer(state, request)
    if who is None:
        raise _Redirect(f"{_root(request)}/login")
    return who


class _Redirect(PageError):
    def __init__(self, location: str) -> None:
        super().__init__(303, location)


async def _form(state: WebState, request: Request, check: str | None = None) -> FormData:
    """The POSTed form, after its CSRF check: the session's token, or `check` (a release
    link's form check) when given. 403 otherwise."""
    form = await request.form()
    submitted = form.get("csrf")
    if check is not None:
        ok = isinstance(submitted, str) and hmac.compare_digest(
            check.encode(), submitted.encode("utf-8", "surrogatepass"))
    else:
        ok = csrf_ok(request.session, submitted)
    if not ok:
        log.warning("web: %s %s without a valid CSRF token from %s", request.method,
                    request.url.path, _client(request))
        raise PageError(403, BAD_CSRF)
    return form


def _text(form: FormData, name: str, limit: int = 1000) -> str:
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


def _https_ok(state: WebState, request: Request) -> bool:
    return state.config.web.allow_plain_http or request.url.scheme == "https"


def _lock(state: WebState, qid: str) -> asyncio.Lock:
    """The message's release lock; the caller's reference keeps it in the weak dictionary
    for as long as it is used."""
    lock = state.locks.get(qid)
    if lock is None:
        lock = state.locks[qid] = asyncio.Lock()
    return lock


# ---- login and logout ------------------------------------------------------------------------

async def login_page(state: WebState, request: Request) -> Response:
    if not _https_ok(state, request):  # no form, and the session is not touched: no cookie
        return _render(state, request, "login.html", session=False, title="Log in",
                       https_only=HTTPS_ONLY, error="", address="", csrf="")
    if _viewer(state, request) is not None:
        return RedirectResponse(f"{_root(request)}/", status_code=303)
    return _render(state, request, "login.html", title="Log in", https_only="", error="",
                   address="", csrf=csrf_token(request.session))


async def login_post(state: WebState, request: Request) -> Response:
    if not _https_ok(state, request):
        return _render(state, request, "login.html", status=403, session=False, title="Log in",
                       https_only=HTTPS_ONLY, error="", address="", csrf="")
    form = await _form(state, request)
    typed = _text(form, "address", 300)
    password = _text(form, "password", MAX_PASSWORD + 1)
    ip = _client(request)

    def again(status: int, error: str) -> Response:
        return _render(state, request, "login.html", status=status, title="Log in",
                       https_only="", error=error, address=typed,
                       csrf=csrf_token(request.session))

    address = login_address(typed)
    if address is None:
        return again(200, NOT_AN_ADDRESS)
    if state.limiter.limited(address, ip):
        LOGINS.labels("limited").inc()
        log.warning("web login limited %s from %s", address, ip)
        return again(429, LIMITED)
    # A password IMAP cannot carry (a line break or NUL would end or split the command), or
    # longer than anyone types, is no one's password: refused without asking.
    usable = (0 < len(password) <= MAX_PASSWORD
              and not any(c in password for c in "\r\n\0"))
    attempt = state.limiter.failed(address, ip)  # until the server says otherwise
    try:
        ok = usable and await state.check(address, password)
    except PasswordCheckUnavailable as exc:
        state.limiter.undo(address, ip, attempt)  # no lock-out for our server's trouble
        log.error("web login of %s from %s not checked: %s", address, ip, exc)
        return again(503, UNAVAILABLE)
    if not ok:
        LOGINS.labels("failed").inc()
        log.warning("web login failed %s from %s", address, ip)
        return again(200, WRONG_PASSWORD)
    state.limiter.undo(address, ip, attempt)
    state.limiter.succeeded(address)
    LOGINS.labels("ok").inc()
    log.info("web login ok %s from %s", address, ip)
    request.session.clear()  # a new session: a new CSRF token, nothing of the one before
    request.session.update({SESSION_USER: address, SESSION_SINCE: state.wall_clock()})
    csrf_token(request.session)
    return RedirectResponse(f"{_root(request)}/", status_code=303)


async def logout_post(state: WebState, request: Request) -> Response:
    await _form(state, request)
    who = _viewer(state, request)
    if who is not None:
        log.info("web logout %s", who.address)
    request.session.clear()
    return RedirectResponse(f"{_root(request)}/login", status_code=303)


# ---- the list ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    id: str
    created_at: dt.datetime
    sender: str
    subject: str
    reason: str
    detail: str
    size: int
    released: bool  # to this viewer (an admin: to anyone)


def _may_hold(who: Viewer, delimiter: str) -> Any:
    """A SQL condition true for every row with a recipient of `who` (and maybe a few more:
    LIKE's % can cross a line). access.may_see decides; this only spares it most rows."""
    local, _, domain = who.address.rpartition("@")
    haystack = literal("\n") + func.lower(QuarantineRecord.recipients) + literal("\n")
    patterns = [f"%\n{like_escape(who.address)}\n%"]
    patterns += [f"%\n{like_escape(local + c)}%@{like_escape(domain)}\n%" for c in delimiter]
    return or_(*(haystack.like(func.lower(literal(p)), escape="/") for p in patterns))


def _search(q: str) -> Any:
    pattern = func.lower(literal(f"%{like_escape(q)}%"))
    record = QuarantineRecord
    return or_(record.id == q, func.lower(record.sender).like(pattern, escape="/"),
               func.lower(record.subject).like(pattern, escape="/"),
               func.lower(record.recipients).like(pattern, escape="/"))


def listing(session: Session, who: Viewer, delimiter: str, q: str, page: int
            ) -> tuple[list[Row], bool]:
    """The viewer's live messages, newest first: page `page` (from 1), and whether there is a
    next one. A user's rows are decided by access.may_see, so they are counted here."""
    record = QuarantineRecord
    query = (select(record, MessageRecord.size)
             .outerjoin(MessageRecord, MessageRecord.id == record.message_id)
             .where(record.expired_at.is_(None))
             .order_by(record.created_at.desc(), record.id.desc()))
    skip = (page - 1) * PAGE_SIZE
    rows: list[Row] = []
    if who.admin:
        if q:
            query = query.where(_search(q))
        found = session.execute(query.offset(skip).limit(PAGE_SIZE + 1)).all()
        candidates = iter(found)
    else:
        query = query.where(_may_hold(who, delimiter))
        candidates = iter(session.execute(query.execution_options(yield_per=500)))
    for rec, message_size in candidates:
        recipients = rec.recipient_list
        if not access.may_see(who, recipients, delimiter):
            continue
        if not who.admin and skip:
            skip -= 1
            continue
        if who.admin:
            released = rec.released_at is not None
        else:  # to her: a row released to another recipient is still hers to release
            delivered = access.delivered_recipients(rec.release_replies)
            released = any(r.lower() in delivered
                           for r in access.own_recipients(who, recipients, delimiter))
        rows.append(Row(rec.id, rec.created_at, rec.sender, rec.subject, rec.reason,
                        rec.detail, message_size if message_size is not None else rec.size,
                        released))
        if len(rows) > PAGE_SIZE:
            break
    return rows[:PAGE_SIZE], len(rows) > PAGE_SIZE


def _page_number(text: str | None) -> int:
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 6:
        return 1
    return max(1, int(text))


async def list_page(state: WebState, request: Request) -> Response:
    who = _login_required(state, request)
    q = (request.query_params.get("q", "") if who.admin else "").strip()[:SEARCH_LIMIT]
    page = _page_number(request.query_params.get("page"))
    rows, more = await state.store.run(
        lambda s: listing(s, who, state.delimiter, q, page), durable=False)
    return _render(state, request, "list.html", title="Messages", rows=rows, q=q,
                   page=page, more=more)


# ---- one message ------------------------------------------------------------------------------

async def _visible(state: WebState, who: Viewer, qid: str) -> QuarantineRecord:
    """The live record `who` may see; 404 for any other ID (malformed, unknown, expired or
    someone else's look the same)."""
    try:
        validate_id(qid)
        record = await state.store.run(lambda s: find(s, qid), durable=False)
    except (InvalidQuarantineId, NotInQuarantine):
        raise PageError(404, NOT_FOUND) from None
    if record.expired_at is not None or not access.may_see(who, record.recipient_list,
                                                          state.delimiter):
        raise PageError(404, NOT_FOUND)
    return record


async def _read(state: WebState, record: QuarantineRecord) -> tuple[Preview | None, str]:
    """The stored message's preview, or why there is none."""
    try:
        data = await asyncio.to_thread(state.files.read, record)
    except FileNotFoundError:
        return None, GONE
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, InvalidQuarantineId) as exc:
        log.error("web: quarantine %s: cannot read its file: %s: %s", record.id,
                  exc.__class__.__name__, exc)
        return None, UNREADABLE
    return await asyncio.to_thread(preview, data), ""


async def detail_page(state: WebState, request: Request) -> Response:
    who = _login_required(state, request)
    record = await _visible(state, who, request.path_params["qid"])
    shown, problem = await _read(state, record)
    recipients = record.recipient_list
    delivered = access.delivered_recipients(record.release_replies)
    return _render(state, request, "detail.html", title=_clean(record.subject) or "(no subject)",
                   record=record, preview=shown, problem=problem,
                   # A user sees their own recipients only: the others may be Bcc.
                   recipients=recipients if who.admin else
                   access.own_recipients(who, recipients, state.delimiter),
                   release=access.release_decision(who, record.reason, recipients,
                                                   state.delimiter, delivered),
                   delete=access.delete_decision(who, recipients, state.delimiter))


@dataclass
class Outcome:
    """What one release or delete did, for the result page."""

    qid: str
    subject: str = ""
    status: int = 200
    done: str = ""  # a sentence when it worked
    error: str = ""  # a sentence when it did not
    replies: list[tuple[str, str, bool]] = field(default_factory=list)  # rcpt, reply, 2xx


async def _release_one(state: WebState, who: Viewer, qid: str) -> Outcome:
    async with _lock(state, qid):
        try:  # read under the lock: a release that just finished counts
            record = await _visible(state, who, qid)
        except PageError as exc:
            return Outcome(qid, status=exc.status, error=exc.text)
        outcome = Outcome(qid, subject=record.subject)
        decision = access.release_decision(
            who, record.reason, record.recipient_list, state.delimiter,
            access.delivered_recipients(record.release_replies))
        if not decision.allowed:
            outcome.status, outcome.error = (403 if decision.forbidden else 409,
                                             decision.refused)
            return outcome
        return await _deliver(state, record, decision.targets, f"web {who.address}", "page",
                              outcome)


async def _deliver(state: WebState, record: QuarantineRecord, targets: Sequence[str],
                   by: str, via: str, outcome: Outcome) -> Outcome:
    """release() to `targets`, the caller holding the message's lock; `force` because a row
    already released to other recipients is released here to the rest (access.py)."""
    try:
        released = await release(state.config, state.store, record.id, to=list(targets),
                                 force=record.released_at is not None, by=by)
    except ReleaseError as exc:
        RELEASES.labels(via, "refused").inc()
        log.warning("web release %s by %s refused: %s", record.id, by, exc)
        outcome.status, outcome.error = 409, str(exc)
        return outcome
    outcome.replies = [(rcpt, reply.line(), reply.is_success)
                       for rcpt, reply in released.results]
    for rcpt, line, _ok in outcome.replies:
        log.info("web release %s by %s: %s: %s", record.id, by, rcpt, line)
    delivered = all(ok for _rcpt, _line, ok in outcome.replies)
    RELEASES.labels(via, "delivered" if delivered else "refused").inc()
    if delivered:
        outcome.done = "Released: the message was delivered."
    else:
        outcome.status = 502
        outcome.error = ("The mail server did not accept the message for every recipient "
                         "(its replies are below).")
    return outcome


async def _delete_one(state: WebState, who: Viewer, qid: str) -> Outcome:
    try:
        record = await _visible(state, who, qid)
    except PageError as exc:
        return Outcome(qid, status=exc.status, error=exc.text)
    outcome = Outcome(qid, subject=record.subject)
    decision = access.delete_decision(who, record.recipient_list, state.delimiter)
    if not decision.allowed:
        outcome.status, outcome.error = 403, decision.refused
        return outcome
    try:
        await asyncio.to_thread(delete_message, state.config.quarantine, state.store, qid)
    except QuarantineBusy:
        outcome.status, outcome.error = 503, BUSY
        return outcome
    except NotInQuarantine:
        outcome.status, outcome.error = 404, NOT_FOUND
        return outcome
    log.info("web delete %s by %s", qid, who.address)
    outcome.done = "Deleted."
    return outcome


def _result_page(state: WebState, request: Request, outcomes: list[Outcome], action: str,
                 status: int) -> Response:
    return _render(state, request, "result.html", status=status,
                   title="Released" if action == "release" else "Deleted",
                   outcomes=outcomes, action=action)


async def _one_message(state: WebState, request: Request, action: str) -> Response:
    """POST /m/QID/release or /m/QID/delete: the action on one message, its result page."""
    await _form(state, request)
    who = _login_required(state, request)
    act = _release_one if action == "release" else _delete_one
    outcome = await act(state, who, request.path_params["qid"])
    if outcome.status == 404:
        raise PageError(404, NOT_FOUND)
    return _result_page(state, request, [outcome], action, outcome.status)


async def release_post(state: WebState, request: Request) -> Response:
    return await _one_message(state, request, "release")


async def delete_post(state: WebState, request: Request) -> Response:
    return await _one_message(state, request, "delete")


async def bulk_post(state: WebState, request: Request) -> Response:
    form = await _form(state, request)
    who = _login_required(state, request)
    action = _text(form, "action", 20)
    if action not in ("release", "delete"):
        raise PageError(400, "Choose release or delete.")
    ids = list(dict.fromkeys(v[:40] for v in form.getlist("id") if isinstance(v, str)))
    if not ids:
        raise PageError(400, "Select at least one message.")
    if len(ids) > BULK_LIMIT:
        raise PageError(400, f"Select at most {BULK_LIMIT} messages at a time.")
    one = _release_one if action == "release" else _delete_one
    outcomes = [await one(state, who, qid) for qid in ids]
    return _result_page(state, request, outcomes, action, 200)


# ---- settings ---------------------------------------------------------------------------------

async def settings_page(state: WebState, request: Request) -> Response:
    form = await _form(state, request) if request.method == "POST" else None
    who = _login_required(state, request)
    result = error = ""
    status = 200
    if form is not None:
        destiny, level = _text(form, "junk_destiny", 20), _text(form, "tag2_level", 20)
        try:
            result = await asyncio.to_thread(save, state.config, state.store, who.address,
                                             destiny, level)
        except SettingsError as exc:
            error, status = str(exc), 400
    now = await asyncio.to_thread(current, state.config, state.store, who.address)
    return _render(state, request, "settings.html", status=status, title="Settings",
                   settings=now, result=result, error=error, level=score(now.tag2_level),
                   low=score(now.tag2_min), high=score(now.tag2_max))


# ---- release links ----------------------------------------------------------------------------

async def _claim(state: WebState, request: Request) -> tuple[ReleaseLinks, str, LinkClaim]:
    if state.links is None:  # [web] base_url unset: no notification carries a link
        raise PageError(404, NOT_FOUND)
    token = request.path_params["token"]
    try:
        return state.links, token, state.links.verify(token, now=state.wall_clock())
    except InvalidLink as exc:
        raise PageError(403, str(exc)) from None


async def _link_record(state: WebState, claim: LinkClaim) -> tuple[QuarantineRecord, str]:
    """The record a valid link names, and its recipient as the record spells it."""
    try:
        record = await state.store.run(lambda s: find(s, claim.qid), durable=False)
    except (InvalidQuarantineId, NotInQuarantine):
        raise PageError(404, NOT_FOUND) from None
    if record.expired_at is not None:
        raise PageError(404, NOT_FOUND)
    spelled = next((r for r in record.recipient_list
                    if r.lower() == claim.recipient.lower()), None)
    if spelled is None:  # signed by us, so never; a second line all the same
        raise PageError(403, NOT_VALID)
    if record.reason == access.VIRUS:
        raise PageError(403, access.ADMIN_ONLY_VIRUS)
    return record, spelled


def _not_delivered_yet(record: QuarantineRecord, recipient: str) -> None:
    """409 when a release (from the page, the CLI or another link) delivered it already."""
    if recipient.lower() in access.delivered_recipients(record.release_replies):
        raise PageError(409, "This message was already released to you.")


async def link_page(state: WebState, request: Request) -> Response:
    """The confirmation page: a GET never releases (mail scanners follow links)."""
    links, token, claim = await _claim(state, request)
    record, recipient = await _link_record(state, claim)
    used = await state.store.run(lambda s: s.get(ReleaseLinkUse, claim.nonce) is not None,
                                 durable=False)
    if used:
        raise PageError(403, USED)
    _not_delivered_yet(record, recipient)
    return _render(state, request, "confirm.html", title="Release this message?",
                   record=record, recipient=recipient, token=token,
                   form_check=links.form_check(token),
                   expires=dt.datetime.fromtimestamp(claim.expires, dt.UTC))


async def link_post(state: WebState, request: Request) -> Response:
    links, token, claim = await _claim(state, request)
    await _form(state, request, check=links.form_check(token))
    async with _lock(state, claim.qid):
        record, recipient = await _link_record(state, claim)
        try:  # spent before the release starts: of two clicks, one releases
            await state.store.run(lambda s: links.consume(s, claim))
        except InvalidLink as exc:
            raise PageError(403, str(exc)) from None
        _not_delivered_yet(record, recipient)
        outcome = await _deliver(state, record, [recipient], f"link {recipient}", "link",
                                 Outcome(record.id, subject=record.subject))
    return _result_page(state, request, [outcome], "release", outcome.status)


# ---- serving ----------------------------------------------------------------------------------

def root_path(base_url: str) -> str:
    """The path prefix of [web] base_url ("https://host/quarantine" -> "/quarantine"): the
    proxy strips it, and the pages put it back in their links and form actions."""
    return urlsplit(base_url).path.rstrip("/")


async def serve(config: Config, store: Store, key: bytes, sock: socket.socket,
                metrics_sock: socket.socket | None = None) -> None:
    """Run the page on the bound `sock` until SIGTERM or SIGINT, then finish the requests
    under way (at most 10 s) and return."""
    import uvicorn

    from ..metrics import serve_http

    unix = sock.family == socket.AF_UNIX
    server_config = uvicorn.Config(
        create_app(config, store, key=key),
        # Behind nginx or Apache: X-Forwarded-For and -Proto count from the proxy only. A
        # unix socket's peers are whoever its mode lets in (the proxy), and have no address.
        proxy_headers=True, forwarded_allow_ips="*" if unix else "127.0.0.1,::1",
        access_log=False,  # the app logs logins itself; an access log is noise here
        log_config=None, lifespan="off", server_header=False,
        root_path=root_path(config.web.base_url), timeout_graceful_shutdown=10)
    server = _Server(server_config)
    metrics = None
    if metrics_sock is not None:
        metrics = await serve_http(metrics_sock, render_metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop)
    log.info("web page listening on %s", config.web.listen)
    try:
        await server.serve(sockets=[sock])
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if metrics is not None:
            metrics.close()
            await metrics.wait_closed()
    log.info("web page stopped")


class _Server:
    """uvicorn's Server, with our signal handlers instead of its own: uvicorn re-raises the
    signal after its shutdown, which would end the process by SIGTERM, not with status 0."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self._server = Quiet(config)

    def stop(self) -> None:
        self._server.should_exit = True

    async def serve(self, sockets: list[socket.socket]) -> None:
        await self._server.serve(sockets=sockets)
