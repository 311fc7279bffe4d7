"""The production path: the model over HTTPS. The real gunicorn, trusting the fake upstream's
certificate through ``SSL_CERT_FILE`` as a deployment trusts a private CA, runs the stream,
cancellation and upstream-fault tests of the plain path unchanged.

On TLS the answer is read by the pump too (``axrisi/providers/transport.py``, ``_tls_read``):
these tests hold it to the same promises, seen from outside. Cancellation is seen from the
upstream's side, the TLS connection closing within a second of the client leaving.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.certs import self_signed
from tests.fake_upstream import FakeUpstream

from .conftest import FAST_SETTINGS, UPSTREAM_KEY
from .servers import Gunicorn
from .test_cancellation import (  # noqa: F401 - collected here against the HTTPS upstream
    test_drop_after_some_tokens_closes_upstream,
    test_drop_before_first_token_closes_upstream,
    test_drop_before_upstream_headers_closes_upstream,
    test_drop_right_after_request,
    test_no_upstream_connection_left_behind,
    test_reader_that_stops_reading_is_dropped,
)
from .test_stream import (  # noqa: F401
    test_awkward_tokens_arrive_exactly,
    test_concurrent_streams_stay_separate,
    test_heartbeats_in_a_silent_gap,
    test_many_fast_tokens_lose_nothing,
    test_upstream_connection_is_kept_alive_between_streams,
)
from .test_upstream_faults import (  # noqa: F401
    test_error_event_inside_upstream_stream,
    test_reset_mid_stream,
    test_silence_mid_stream_times_out,
    test_stream_that_ends_without_done,
)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    """The fake upstream over TLS, with a certificate made for this module."""
    with FakeUpstream(tls=self_signed(tmp_path_factory.mktemp("upstream-tls"))) as fake:
        yield fake


@pytest.fixture(scope="module")
def server(upstream: FakeUpstream) -> Iterator[Gunicorn]:
    """The service with ``OPENAI_BASE_URL=https://...`` and the certificate trusted."""
    assert upstream.base_url.startswith("https://")
    env = {**FAST_SETTINGS, "OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": UPSTREAM_KEY,
           "SSL_CERT_FILE": str(upstream.cert_file)}
    with Gunicorn(env) as gunicorn:
        yield gunicorn
