"""The sticky router beside admission: a paused endpoint is not a failed one."""

from __future__ import annotations

from limpet import AdmissionConfig
from limpet.errors import RateLimitError
from limpet.http.admission import Admissions
from tests.test_routing import document, fail, first, rag, router, serve


def paused(admissions: Admissions, name: str, seconds: float) -> None:
    endpoint = next(e for e in ENDPOINTS if e.name == name)
    admissions.of(endpoint).pause(seconds)


ENDPOINTS = router().endpoints


async def test_new_prefixes_prefer_an_open_endpoint() -> None:
    r, admissions = router(), Admissions(AdmissionConfig())
    r.use_admissions(admissions)
    body = rag(document("fresh"), "q")
    home = first(r, body)
    paused(admissions, home, 5.0)
    route = r.select(body)
    assert route.endpoints[0].name != home
    assert route.endpoints[-1].name == home  # still in the failover order, last


async def test_a_sticky_prefix_stays_home_unless_the_pause_is_long() -> None:
    r, admissions = router(), Admissions(AdmissionConfig(repin_pause=30.0))
    r.use_admissions(admissions)
    body = rag(document("sticky"), "q")
    other = rag(document("sticky"), "another question")
    home = serve(r, body)
    paused(admissions, home, 5.0)  # shorter than repin_pause: wait for home
    assert first(r, other) == home
    paused(admissions, home, 120.0)
    assert first(r, other) != home


async def test_429s_never_eject_an_endpoint() -> None:
    r = router()
    r.use_admissions(Admissions(AdmissionConfig()))
    body = rag(document("limited"), "q")
    for _ in range(10):
        fail(r, body, RateLimitError("slow down", status_code=429))
    assert r.stats.ejections == 0
    assert first(r, body) == serve(r, body)
