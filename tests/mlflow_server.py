"""Real `mlflow models serve` and `mlflow server` on 127.0.0.1 and a free port, for
end-to-end tests."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class ServerURL(str):
    """The server's base URL; `.pid` is the `mlflow models serve` process."""

    pid: int


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (uvicorn runs as a child)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines()
                       if line.startswith("VmRSS:")), 0)
    return total / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(args: list[str], ping: str, cwd: Path, timeout: float = 120):
    """Start `mlflow ARGS -h 127.0.0.1 -p PORT` (one OpenMP thread: it shares 2 cores with
    the test), poll `ping` until it answers, yield its URL, and stop it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_ID"}
    env |= {"PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "OMP_NUM_THREADS": "1"}
    log_path = cwd / f"server-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", *args, "-h", "127.0.0.1",
                                 "-p", str(port)], cwd=cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        url = ServerURL(f"http://127.0.0.1:{port}")
        url.pid = proc.pid
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{url}{ping}", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("server did not come up:\n" + log_path.read_text()[-3000:])
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def serving(model_uri: str, cwd: Path, timeout: float = 120):
    """`mlflow models serve` of a model (REST scoring)."""
    return running(["models", "serve", "-m", model_uri, "--env-manager", "local"], "/ping",
                   cwd, timeout)


def tracking_server(store_uri: str, cwd: Path, timeout: float = 120):
    """`mlflow server` (the UI and tracking API) on a test's store, one worker."""
    return running(["server", "--backend-store-uri", store_uri, "--workers", "1"], "/health",
                   cwd, timeout)


def post(url: str, body, content_type: str = "application/json") -> tuple[int, str]:
    req = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def memory_of_request(url: ServerURL, warm, body) -> dict:
    """One large request and the server's resident memory around it: `warm` first (what
    idle means), then RSS idle, its peak while `body` runs (sampled every 0.1 s) and
    5 s after. Returns status, predictions (their number; the error text otherwise),
    seconds, idle, peak and after (MiB)."""
    import threading

    assert post(url, warm)[0] == 200
    time.sleep(3)
    idle, peak, done = tree_rss_mib(url.pid), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_mib(url.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    status, text = post(url, body)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    predictions = len(json.loads(text)["predictions"]) if status == 200 else text[-300:]
    del text
    time.sleep(5)
    return {"status": status, "predictions": predictions, "seconds": seconds, "idle": idle,
            "peak": peak[0], "after": tree_rss_mib(url.pid)}
