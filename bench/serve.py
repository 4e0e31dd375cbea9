"""HTTP serving benchmark: `fsql serve` against a minimal baseline server, side by side, on loopback.

    python -m bench.serve [--scale 0.05] [--seconds 5] [--connections 32] [--redis-url redis://127.0.0.1:6379/0]

Builds the 10-feature project of ``bench.online`` (a ``scoring`` training set over the view, and an ONNX
logistic model on its 10 features), materializes it into Redis under a random prefix and writes the same
latest rows as plain hashes for the baseline. Then it starts, each in its own process with the same
uvicorn settings (uvloop, httptools, one worker, no access log):

- ``fsql serve`` with micro-batching, and another without it;
- the baseline: the same Starlette + uvicorn, one route that parses the same request body, does a raw
  ``HMGET`` of the 10 fields per entity (one pipeline) and returns JSON;
- the baseline route in FastAPI with a pydantic request model (the framework choice), when FastAPI is
  installed.

and loads them with ``wrk`` (bounded: ``--rounds`` of ``--seconds`` per run, ``--connections`` open
connections, random customers; fsql and baseline runs alternate and each figure is the median over rounds): p50/p99 and requests/s for /v1/features with 1 and 100 entities, and /predict with batching
on and off. It fails if any request errors. Every key under its prefix and the temporary folder are
deleted at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from bench.data import END, FEATURE_NAMES
from bench.online import VIEW, latest_rows, make_project, raw_hset

SET_FILE = f"""\
-- @training_set scoring
-- @timestamp event_ts
-- @features {VIEW}.*
-- Every order, scored with the customer's features as known then.
SELECT customer_id, event_ts FROM orders
"""


# The baseline server (imported by uvicorn in its own process) -------------------------------------------


def baseline_app() -> Any:
    """One route: the request body, a raw HMGET per entity in one pipeline, JSON back."""
    import orjson

    client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    ns = os.environ["BENCH_RAW_NS"]
    fields = list(FEATURE_NAMES)

    def lookup(ids: list[int]) -> dict[str, Any]:
        if len(ids) == 1:
            rows = [client.hmget(f"{ns}{ids[0]}", fields)]
        else:
            pipe = client.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(f"{ns}{i}", fields)
            rows = pipe.execute()
        columns: dict[str, Any] = {"customer_id": ids}
        for j, name in enumerate(fields):
            columns[name] = [None if r[j] is None else float(r[j]) for r in rows]
        return {"count": len(ids), "columns": columns}

    if os.environ.get("BENCH_FRAMEWORK") == "fastapi":
        from fastapi import FastAPI
        from fastapi.responses import ORJSONResponse
        from pydantic import BaseModel

        class Body(BaseModel):
            features: list[str]
            entities: dict[str, list[int]]

        api = FastAPI(default_response_class=ORJSONResponse)

        async def features(body: Any) -> Any:
            return lookup(body.entities["customer_id"])

        features.__annotations__["body"] = Body  # a local class: string annotations would not resolve
        api.post("/v1/features")(features)

        @api.get("/healthz")
        async def healthz() -> Any:
            return {"status": "ok"}

        return api

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def features_route(request: Request) -> Response:
        body = orjson.loads(await request.body())
        return Response(orjson.dumps(lookup(body["entities"]["customer_id"])), media_type="application/json")

    async def health(_request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[Route("/v1/features", features_route, methods=["POST"]),
                             Route("/healthz", health, methods=["GET"])])


# Setup --------------------------------------------------------------------------------------------------


def write_model(path: Path) -> None:
    """A logistic model over the 10 features as one [N, 10] float input (NULLs are imputed as 0)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(7)
    weights = rng.normal(0, 0.01, size=(len(FEATURE_NAMES), 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("IsNaN", ["x"], ["nan"]),
         helper.make_node("Where", ["nan", "zero", "x"], ["clean"]),
         helper.make_node("MatMul", ["clean", "w"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["y"])],
        "scorer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, len(FEATURE_NAMES)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.flatten().tolist()),
         helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def setup(root: Path, scale: float, url: str, prefix: str, client: redis.Redis) -> int:
    from fsql import Store

    _, customers = make_project(root, scale)
    (root / "features" / "scoring.sql").write_text(SET_FILE)
    write_model(root / "models" / "scorer.onnx")
    config = (root / "fsql.toml").read_text()
    config = config.replace('store = "sqlite"\npath = "online.db"', f'store = "redis"\nurl = "{url}"\nprefix = "{prefix}"')
    config += '\n[models.scorer]\ntraining_set = "scoring"\nkind = "onnx"\npath = "models/scorer.onnx"\n'
    config += "batching = { max_batch = 64, max_wait_ms = 2 }\n"
    (root / "fsql.toml").write_text(config)
    with Store(root) as store:
        store.build()
        store.materialize(full=True)
    _, latest = latest_rows(root, END)
    raw_hset(client, f"{prefix}:raw:", latest)
    return customers


# Running servers and load ----------------------------------------------------------------------------


def start(target: str, port: int, env: dict[str, str], ready: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", "--factory", target, "--host", "127.0.0.1", "--port", str(port),
               "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"]
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready}", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"{target} exited with {process.returncode}")
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{target} did not become ready")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


LUA = """\
math.randomseed({seed})
request = function()
  local ids = {{}}
  for i = 1, {count} do ids[i] = math.random(1, {customers}) end
  local body = '{{{prefix}"entities":{{"customer_id":[' .. table.concat(ids, ",") .. ']}}}}'
  return wrk.format("POST", "{path}", {{["Content-Type"] = "application/json"}}, body)
end
"""


def load(port: int, path: str, count: int, customers: int, seconds: float, connections: int, work: Path,
         features: bool) -> dict[str, float]:
    script = work / f"load-{uuid.uuid4().hex[:6]}.lua"
    prefix = f'"features":["{VIEW}.*"],' if features else ""
    script.write_text(LUA.format(seed=int(time.time()), count=count, customers=customers, path=path, prefix=prefix))
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s", "--latency", "-s", str(script),
                          f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True).stdout

    def latency(q: str) -> float:
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    # A request still unanswered after wrk's timeout counts as failed too.
    errors = (int(bad.group(1)) if bad else 0) + (sum(int(g) for g in sockets.groups()) if sockets else 0)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"p50": latency("50"), "p99": latency("99"), "rps": rps, "requests": requests, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--seconds", type=int, default=3, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench.serve needs wrk (apt-get install wrk)")
    prefix = f"fsqlbench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(args.redis_url)
    work = Path(tempfile.mkdtemp(prefix="fsql-serve-bench-"))
    root = work / "project"
    processes: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, float]] = {}
    try:
        customers = setup(root, args.scale, args.redis_url, prefix, client)
        base_env = {"BENCH_REDIS_URL": args.redis_url, "BENCH_RAW_NS": f"{prefix}:raw:"}
        servers = {
            "fsql": ("fsql.server:factory", {"FSQL_SERVE_ROOT": str(root), "FSQL_SERVE_BATCHING": "1"}, "/readyz"),
            "fsql-nobatch": ("fsql.server:factory", {"FSQL_SERVE_ROOT": str(root), "FSQL_SERVE_BATCHING": "0"}, "/readyz"),
            "baseline": ("bench.serve:baseline_app", {**base_env, "BENCH_FRAMEWORK": "starlette"}, "/healthz"),
        }
        framework = importlib.util.find_spec("fastapi") is not None  # the framework comparison is optional
        if framework:
            servers["fastapi"] = ("bench.serve:baseline_app", {**base_env, "BENCH_FRAMEWORK": "fastapi"}, "/healthz")
        runs = [
            ("features 1 entity", "fsql", "/v1/features", 1, True),
            ("features 1 entity", "baseline", "/v1/features", 1, True),
            ("features 100 entities", "fsql", "/v1/features", 100, True),
            ("features 100 entities", "baseline", "/v1/features", 100, True),
            ("predict 1 entity", "fsql", "/v1/models/scorer/predict", 1, False),
            ("predict 1 entity", "fsql-nobatch", "/v1/models/scorer/predict", 1, False),
        ]
        if framework:
            runs.append(("baseline 1 entity", "fastapi", "/v1/features", 1, True))
        ports = {}
        for i, (name, (target, env, ready)) in enumerate(servers.items()):
            ports[name] = 18900 + i
            processes.append(start(target, ports[name], env, ready))
        for _what, server, path, count, features in runs:  # warm-up
            load(ports[server], path, count, customers, 1, args.connections, work, features)
        # Other processes share this machine: short runs, fsql and its baseline alternating, several
        # rounds; the median of each figure over the rounds.
        rounds: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for what, server, path, count, features in runs:
                rounds.setdefault(f"{what} [{server}]", []).append(
                    load(ports[server], path, count, customers, args.seconds, args.connections, work, features))
        for run, samples in rounds.items():
            results[run] = {k: (sum(s[k] for s in samples) if k in ("requests", "errors")
                                else float(np.median([s[k] for s in samples]))) for k in samples[0]}
    finally:
        for process in processes:
            stop(process)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start_at in range(0, len(keys), 1000):
            client.delete(*keys[start_at:start_at + 1000])
        client.close()
        shutil.rmtree(work, ignore_errors=True)

    print(f"{'run':<44} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'requests':>9} {'errors':>7}")
    for run, r in results.items():
        print(f"{run:<44} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['rps']:>9.0f} {r['requests']:>9.0f} {r['errors']:>7.0f}")
    ratio = {
        "p99 fsql/baseline, 1 entity (goal <= 1.3)":
            results["features 1 entity [fsql]"]["p99"] / results["features 1 entity [baseline]"]["p99"],
        "p99 fsql/baseline, 100 entities (goal <= 1.3)":
            results["features 100 entities [fsql]"]["p99"] / results["features 100 entities [baseline]"]["p99"],
        "predict req/s batching on/off (goal >= 3)":
            results["predict 1 entity [fsql]"]["rps"] / results["predict 1 entity [fsql-nobatch]"]["rps"],
    }
    if "baseline 1 entity [fastapi]" in results:
        ratio["req/s Starlette/FastAPI baseline, 1 entity"] = (
            results["features 1 entity [baseline]"]["rps"] / results["baseline 1 entity [fastapi]"]["rps"])
    else:
        print("(FastAPI is not installed: the framework comparison was not run)")
    for what, value in ratio.items():
        print(f"{what:<50} {value:.2f}")
    errors = sum(r["errors"] for r in results.values())
    if errors:
        raise SystemExit(f"{errors} requests failed")


if __name__ == "__main__":
    main()
