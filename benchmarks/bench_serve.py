"""Requests/s of the HTTP service on loopback, at concurrency 1 and 4, bounded in count and time.

The service runs as ``python -m fnoise_maskrcnn.serve`` in a subprocess (one model replica, forward
passes serialised); clients are threads of this process, each with its own connection, posting real
images (coco128 val, else synthetic) to ``POST /predict``. The two concurrency levels alternate
``--rounds`` times (so that machine load affects both alike); each phase sends ``--requests``
requests or stops after ``--phase-timeout`` seconds. The JSON output has the median requests/s
and latency percentiles per level, and the median ratio of the two throughputs.

    python benchmarks/bench_serve.py [--checkpoint CKPT] [--requests 6] [--rounds 2]

Without ``--checkpoint`` a random-weight ResNet-50 model at ``--min-size 256 --max-size 384`` is used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from _inference_common import benchmark_images, write_random_checkpoint
from _results import write_result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"error: the server exited with code {process.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"error: the server did not answer within {timeout:.0f} s")
            try:
                client.get(f"{url}/health").raise_for_status()
                return
            except httpx.TransportError:
                time.sleep(0.25)


def phase(url: str, payloads: list, concurrency: int, requests: int, timeout: float) -> dict:
    """Sends up to ``requests`` requests with ``concurrency`` clients; returns throughput and latencies."""
    deadline = time.monotonic() + timeout
    latencies: list = []
    counter = iter(range(requests))

    def client_loop(worker: int) -> None:
        with httpx.Client(timeout=timeout) as client:
            for i in counter:
                if time.monotonic() > deadline:
                    return
                name, data = payloads[(i + worker) % len(payloads)]
                start = time.perf_counter()
                response = client.post(f"{url}/predict", files={"image": (name, data, "image/jpeg")})
                response.raise_for_status()
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(client_loop, range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "completed": len(latencies),
        "seconds": elapsed,
        "requests_per_second": len(latencies) / elapsed,
        "latency_p50": latencies[len(latencies) // 2],
        "latency_p90": latencies[min(len(latencies) - 1, int(0.9 * len(latencies)))],
    }


@contextlib.contextmanager
def running_server(checkpoint: Path) -> Iterator[str]:
    """``python -m fnoise_maskrcnn.serve`` on a free loopback port, up and answering; yields its URL and
    stops it on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "fnoise_maskrcnn.serve", "--checkpoint", str(checkpoint)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(url, server, timeout=120)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--requests", type=int, default=6, help="requests per phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--phase-timeout", type=float, default=60.0)
    parser.add_argument("--min-size", type=int, default=256)
    parser.add_argument("--max-size", type=int, default=384)
    args = parser.parse_args()

    payloads = [(p.name, p.read_bytes()) for p in benchmark_images(4)]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or write_random_checkpoint(
            Path(tmp) / "random.pth", 81, args.min_size, args.max_size
        )
        with running_server(checkpoint) as url:
            phase(url, payloads, 1, 2, args.phase_timeout)  # warm-up
            results = {1: [], 4: []}
            for r in range(args.rounds):
                for concurrency in results:
                    results[concurrency].append(
                        phase(url, payloads, concurrency, args.requests, args.phase_timeout)
                    )
                    print(
                        f"round {r + 1}, concurrency {concurrency}: {results[concurrency][-1]}",
                        file=sys.stderr,
                    )

    def median(concurrency: int, key: str) -> float:
        return statistics.median(p[key] for p in results[concurrency])

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "setting": "server and clients on the same machine",
        "checkpoint": str(args.checkpoint)
        if args.checkpoint
        else f"random resnet50, min_size {args.min_size}, max_size {args.max_size}",
        "images": [name for name, _ in payloads],
        "requests_per_phase": args.requests,
        "rounds": args.rounds,
        "concurrency": {
            str(c): {
                "requests_per_second_median": median(c, "requests_per_second"),
                "latency_p50_median": median(c, "latency_p50"),
                "latency_p90_median": median(c, "latency_p90"),
                "completed": [p["completed"] for p in results[c]],
            }
            for c in results
        },
        "throughput_ratio_c4_over_c1": statistics.median(
            a["requests_per_second"] / b["requests_per_second"] for a, b in zip(results[4], results[1])
        ),
    }
    print(json.dumps(report, indent=2))
    print(f"wrote {write_result('serve', report)}")


if __name__ == "__main__":
    main()
