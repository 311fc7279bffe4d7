"""What the parts of a request cost the worker, one by one, in one process: the figures behind
"CPU per request" (issue 23's goal: 1 ms with 1-token answers; ``run.py``'s ``requests``).

No network and no gunicorn: each part is called ``--calls`` times and reported in µs per call.

* the bearer JWT: PyJWT's HS256 check (what flask-jwt-extended runs for a token this worker has
  not seen; ``tokencache.py`` skips it for one it verified a moment ago);
* the request rate: flask-limiter's strategy, ``limits``' moving window, on its memory storage
  (with ``REDIS_URL``, one Redis round trip more);
* the model request: the official SDK's raw ``client.post`` as ``openai_compat._open`` sends it
  (building options, headers and auth, httpx2's ``Client.send``), against httpx2's
  ``MockTransport`` that answers at once: the SDK's own work, without a socket;
* Flask: a whole ``POST /api/run`` through Werkzeug's test client on the local provider, its
  one-token answer read to the end (the test client's own WSGI environ building included, so
  an upper bound of what Flask, the validation, the admission and the relay cost together).

    .venv/bin/python bench/request_cost.py        # about 20 seconds
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx2  # noqa: E402
import jwt  # noqa: E402
import limits  # noqa: E402
import openai  # noqa: E402
import orjson  # noqa: E402

SECRET = "s" * 48


def per_call(fn: Callable[[int], object], count: int) -> float:
    """µs per call of ``fn(i)`` over ``count`` calls, after a warm-up."""
    for index in range(min(count, 200)):
        fn(index)
    started = time.perf_counter()
    for index in range(count):
        fn(index)
    return (time.perf_counter() - started) / count * 1e6


def jwt_check(count: int) -> float:
    token = jwt.encode({"sub": "user-1", "exp": int(time.time()) + 3600, "type": "access",
                        "fresh": False, "jti": "j", "nbf": int(time.time()) - 1},
                       SECRET, algorithm="HS256")
    return per_call(lambda _: jwt.decode(token, SECRET, algorithms=["HS256"]), count)


def rate_limit(count: int) -> float:
    limiter = limits.strategies.MovingWindowRateLimiter(limits.storage.MemoryStorage())
    item = limits.parse("1000000/minute")
    return per_call(lambda i: limiter.hit(item, f"user-{i % 100}"), count)


def sdk_request(count: int) -> float:
    head = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\ndata: [DONE]\n\n'
    transport = httpx2.MockTransport(lambda request: httpx2.Response(
        200, headers={"content-type": "text/event-stream"}, content=head))
    client = openai.OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", max_retries=0,
                           http_client=openai.DefaultHttpxClient(transport=transport))
    body = orjson.dumps({"model": "m", "stream": True, "messages": [
        {"role": "system", "content": "Summarize."}, {"role": "user", "content": "Text."}]})

    def post(_: int) -> None:
        response = client.post("/chat/completions", cast_to=httpx2.Response, content=body,
                               options={"headers": {"X-Stainless-Raw-Response": "stream"}})
        response.close()
    return per_call(post, count)


def flask_request(count: int) -> float:
    from axrisi import create_app
    from axrisi.config import Settings

    app = create_app(Settings(env="development", jwt_secret_key=SECRET, local_pace_seconds=0,
                              rate_limit="1000000/minute", max_streams_per_user=0))
    logging.disable(logging.INFO)  # the access log's line per request
    client = app.test_client()
    with app.app_context():
        from flask_jwt_extended import create_access_token
        token = create_access_token(identity="user-1")
    headers = {"Authorization": f"Bearer {token}"}

    def run(_: int) -> None:
        response = client.post("/api/run", json={"command": "summarize", "text": "One line."},
                               headers=headers)
        response.get_data()
        response.close()
    return per_call(run, count // 10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    rows = [("the bearer JWT, HS256 (PyJWT)", jwt_check(args.calls)),
            ("the rate limit, moving window, memory storage (limits)", rate_limit(args.calls)),
            ("the model request, SDK + httpx2, no socket", sdk_request(args.calls)),
            ("POST /api/run through Flask's test client, local provider, read to the end",
             flask_request(args.calls))]
    print("| part | µs per call |\n| --- | --- |")
    for name, micros in rows:
        print(f"| {name} | {micros:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
