"""The review page (`arhn review`): one candidate at a time, answered by keyboard or click, blind to every
machine's decision until answered. A Starlette app on 127.0.0.1 by default; every path starts with a random
token printed with the URL (anything else is 404). Passages are text: Jinja2 escapes every value, query terms
are marked on the escaped text, and a Content-Security-Policy lets only the page's own script (by nonce) run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import jinja2
from markupsafe import Markup, escape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from arhn_pipeline.review import core, data

Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]
REVIEWER = re.compile(r"^[A-Za-z0-9_.@ -]{1,64}$")
STOPWORDS = frozenset(
    "the a an of in on at to for and or is are was were be by with what which who whom how why when where does do "
    "did from that this these those it its as than then can could would should".split()
)
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def query_terms(query: str) -> set[str]:
    return {w.lower() for w in re.findall(r"\w+", query) if len(w) > 2 and w.lower() not in STOPWORDS}


def highlighted(text: str, terms: set[str]) -> Markup:
    """The text escaped, with each word that is a query term (case-insensitive) in <mark>."""
    out = []
    for piece in re.split(r"(\w+)", text):
        safe = escape(piece)
        out.append(Markup("<mark>{}</mark>").format(safe) if piece.lower() in terms else safe)
    return Markup("").join(out)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ReviewApp:
    """The page's state: the partition, the store, the predictions (fixed while the page runs)."""

    connect: Connect
    subset: str
    token: str
    predicted: dict[str, dict[core.Key, bool | None]]
    decided: dict[tuple[str, str, str], tuple[str, str]] = field(default_factory=dict)  # (method, q, p) -> rule
    reveal_after: bool = False
    recheck: float = 0.0
    on_answer: Callable[[], None] | None = None
    answered: int = field(default=0)

    @property
    def base(self) -> str:
        return f"/{self.token}"

    def routes(self) -> list[Route]:
        return [
            Route("/{token}/", self.start),
            Route("/{token}/item", self.item),
            Route("/{token}/answer", self.answer, methods=["POST"]),
            Route("/{token}/revealed", self.revealed),
            Route("/{token}/estimate.json", self.estimate_json),
        ]

    def app(self) -> Starlette:
        return Starlette(routes=self.routes())

    # --- requests ---

    def _checked(self, request: Request) -> None:
        if not hmac.compare_digest(request.path_params["token"], self.token):
            raise _NotFound

    def _reviewer(self, value: Any) -> str:
        name = str(value or "").strip()
        if not REVIEWER.match(name):
            raise _BadRequest("a reviewer's name: 1 to 64 letters, digits, spaces, _ . @ or -")
        return name

    def _render(self, view: str, **values: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(12)
        html = TEMPLATES.get_template("page.html.j2").render(
            view=view,
            subset=self.subset,
            base=self.base,
            nonce=nonce,
            **{"progress": None, "reviewer": "", "estimates": None, **values},  # fmt: skip
        )
        return HTMLResponse(
            html,
            headers={
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                f"script-src 'nonce-{nonce}'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
            },
        )

    async def start(self, request: Request) -> Response:
        return await _guarded(request, lambda: self._start(request))

    def _start(self, request: Request) -> Response:
        self._checked(request)
        if request.query_params.get("reviewer"):
            return RedirectResponse(f"{self.base}/item?reviewer={_q(request.query_params['reviewer'])}", 303)
        return self._render("name")

    async def item(self, request: Request) -> Response:
        return await _guarded(request, lambda: self._item(request))

    def _item(self, request: Request) -> Response:
        self._checked(request)
        reviewer = self._reviewer(request.query_params.get("reviewer"))
        with self.connect() as conn:
            row, progress = data.next_item(conn, self.subset, reviewer, self.recheck)
            estimates = self._estimates(conn)
            if row is None:
                return self._render("done", reviewer=reviewer, progress=progress, estimates=estimates,
                                    recheck=self.recheck)  # fmt: skip
            shown = data.candidate(conn, self.subset, row["query_id"], row["passage_id"])
        terms = query_terms(shown["query"])
        return self._render(
            "item",
            reviewer=reviewer,
            progress=progress,
            estimates=estimates,
            query_html=highlighted(shown["query"], terms),
            positive_html=highlighted(shown["positive"], terms),
            passage_html=highlighted(shown["passage"], terms),
            title=shown["title"],
            query_id=row["query_id"],
            passage_id=row["passage_id"],
            item=row["item"],
            shown_at=dt.datetime.now().isoformat(timespec="microseconds"),
            answers=[(key, text, n) for n, (key, (text, _)) in enumerate(core.ANSWERS.items(), start=1)],
        )

    async def answer(self, request: Request) -> Response:
        form = await request.form()
        return await _guarded(request, lambda: self._answer(request, dict(form)))

    def _answer(self, request: Request, form: dict[str, Any]) -> Response:
        self._checked(request)
        reviewer = self._reviewer(form.get("reviewer"))
        answer = str(form.get("answer", ""))
        if answer not in core.ANSWERS:
            raise _BadRequest(f"answer must be one of {', '.join(core.ANSWERS)}")
        qid, pid = str(form.get("query_id", "")), str(form.get("passage_id", ""))
        with self.connect() as conn:
            drawn = conn.execute(
                "SELECT stratum, stratum_size, stratum_drawn FROM review_items WHERE subset = ? AND query_id = ? "
                "AND passage_id = ?",
                [self.subset, qid, pid],
            ).fetchone()
            if drawn is None:
                raise _BadRequest("not an item of this partition's sample")
            shown = data.candidate(conn, self.subset, qid, pid)
            try:
                shown_at = dt.datetime.fromisoformat(str(form.get("shown_at")))
            except ValueError:
                shown_at = None
            data.record(
                conn,
                [
                    dict(
                        subset=self.subset, query_id=qid, passage_id=pid, reviewer=reviewer, answer=answer,
                        shown_at=shown_at, answered_at=dt.datetime.now(), stratum=drawn[0],
                        weight=drawn[1] / drawn[2],
                        shown={"blind": True, "revealed_after": self.reveal_after, "highlighted": True,
                               "query": _digest(shown["query"]), "positive": _digest(shown["positive"]),
                               "candidate": _digest(shown["passage"])},
                    )
                ],
                origin="page",
            )  # fmt: skip
        self.answered += 1
        if self.on_answer is not None:
            self.on_answer()
        where = "revealed" if self.reveal_after else "item"
        query = f"reviewer={_q(reviewer)}" + (f"&q={_q(qid)}&p={_q(pid)}" if self.reveal_after else "")
        return RedirectResponse(f"{self.base}/{where}?{query}", 303)

    async def revealed(self, request: Request) -> Response:
        return await _guarded(request, lambda: self._revealed(request))

    def _revealed(self, request: Request) -> Response:
        self._checked(request)
        if not self.reveal_after:
            raise _NotFound
        reviewer = self._reviewer(request.query_params.get("reviewer"))
        key = (request.query_params.get("q", ""), request.query_params.get("p", ""))
        with self.connect() as conn:
            mine = conn.execute(
                "SELECT answer, stratum FROM reviews WHERE subset = ? AND query_id = ? AND passage_id = ? "
                "AND reviewer = ? ORDER BY answered_at DESC LIMIT 1",
                [self.subset, *key, reviewer],
            ).fetchone()
            if mine is None:  # never reveal an item before this reviewer answered it
                raise _BadRequest("answer the item first")
            _, progress = data.next_item(conn, self.subset, reviewer, self.recheck)
            estimates = self._estimates(conn)
        decisions = [(m, *self.decided.get((m, *key), ("-", "-"))) for m in sorted(self.predicted)]
        return self._render(
            "revealed", reviewer=reviewer, progress=progress, estimates=estimates, decisions=decisions,
            answer_text=core.ANSWERS[mine[0]][0], stratum=mine[1],
        )  # fmt: skip

    async def estimate_json(self, request: Request) -> Response:
        if not hmac.compare_digest(request.path_params["token"], self.token):
            return Response("not found", 404)
        with self.connect() as conn:
            estimates = self._estimates(conn)
            given = data.reviews(conn, self.subset).height
        return JSONResponse(
            {
                "subset": self.subset,
                "reviews": given,
                "estimates": {
                    name: {
                        k: getattr(e, k)
                        for k in (
                            "reviewed",
                            "kappa",
                            "kappa_low",
                            "kappa_high",
                            "precision",
                            "recall",
                            "f1",
                            "covered",
                        )
                    }  # fmt: skip
                    for name, e in estimates
                },
            }
        )

    def _estimates(self, conn: duckdb.DuckDBPyConnection) -> list[tuple[str, core.Estimate]]:
        measured = data.measure(conn, self.subset, self.predicted)
        return sorted(measured.estimates.items()) if measured else []


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


class _NotFound(Exception):
    pass


class _BadRequest(Exception):
    pass


async def _guarded(request: Request, handler: Callable[[], Response]) -> Response:
    """Run a handler; a wrong token is 404 (the page does not say it exists), a bad request 400 as text."""
    try:
        return handler()
    except _NotFound:
        return Response("not found", 404, media_type="text/plain")
    except _BadRequest as exc:
        return Response(str(exc), 400, media_type="text/plain")


def throttled(call: Callable[[], None], seconds: float) -> Callable[[], None]:
    """`call` at most once every `seconds` (the first call goes through)."""
    last = [0.0]

    def maybe() -> None:
        if time.monotonic() - last[0] >= seconds:
            last[0] = time.monotonic()
            call()

    return maybe


def serve(review: ReviewApp, host: str, port: int, announce: Callable[[str], None]) -> None:
    """Serve the page until interrupted (uvicorn); `announce` gets the URL once the socket listens."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    announce(f"http://{shown_host}:{bound}/{review.token}/")
    config = uvicorn.Config(review.app(), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
