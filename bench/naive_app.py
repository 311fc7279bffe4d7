"""The naive baseline: the Flask + gevent + openai SDK relay the original article leads to.

Kept deliberately naive, because it is what every headline figure of the benchmark is divided
by: one module-level SDK client with its defaults, a view that opens the model's stream, and a
generator that yields one ``data: {json}`` event per content chunk. The same JWT check as the
service (flask-jwt-extended, HS256 with ``JWT_SECRET_KEY``) so that per-request work is alike.

What it does not do, on purpose: notice that the client left (a WSGI app only learns that when a
write fails, and a generator waiting for the next token does not write), close the upstream
request when it did, pool more than the SDK's default 1,000 connections, or anything about
heartbeats, ids, errors or back-pressure. The benchmark reports what that costs.

Served like the service, by one gunicorn gevent worker (``bench/naive_gunicorn.conf.py``)::

    gunicorn -c bench/naive_gunicorn.conf.py -b 127.0.0.1:8001 bench.naive_app:app
"""

import json
import os

from flask import Flask, Response, request
from flask_jwt_extended import JWTManager, jwt_required
from openai import OpenAI

app = Flask(__name__)
app.config["JWT_SECRET_KEY"] = os.environ["JWT_SECRET_KEY"]
JWTManager(app)

client = OpenAI()  # OPENAI_API_KEY and OPENAI_BASE_URL from the environment
MODEL = os.environ.get("AXRISI_MODEL", "gpt-4o-mini")


@app.route("/api/run", methods=["POST"])
@jwt_required()
def run():
    data = request.get_json()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You summarize texts. Give a concise summary."},
            {"role": "user", "content": data["text"]},
        ],
        stream=True,
    )

    def generate():
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield f"data: {json.dumps({'content': chunk.choices[0].delta.content})}\n\n"
        yield f"data: {json.dumps({'done': True})}\n\n"

    return Response(generate(), mimetype="text/event-stream")
