#!/usr/bin/env python3
"""Peak memory of `truthgpt serve` on a (quantized) GGUF model under a few requests (issue 18:
"peak RSS of serving a Q4 model is within ~15% of the file size plus the KV pool").

Starts `truthgpt serve --model FILE --port 0`, waits for /ready, then sends --requests greedy
completions (--concurrency at a time, prompts from the bundled plays, --max-tokens each) to
/v1/completions (--prompt-chars of a play each), sampling the server's /proc/PID/status (VmRSS, RssAnon, RssFile) and /metrics
(kv_blocks_used, kv_bytes_allocated) every --interval seconds. At the end it reads VmHWM (the
peak RSS the kernel recorded) and prints one JSON object:

- file_bytes, kv_bytes_peak (the KV pool's allocated bytes at its largest: the pool grows block
  by block, so this is the pool the requests made, not its configured capacity), kv_capacity_bytes;
- vmhwm_bytes, and the peak anonymous and file-backed parts (the weights are mapped: they are
  file pages; KV, activations, logits and any copy of a weight are anonymous);
- ratio = vmhwm / (file + kv_bytes_peak).

    /work/venv/bin/python scripts/measure_serve_rss.py --model FILE.gguf [--requests 8]
        [--concurrency 4] [--max-tokens 32] [--max-batch N] [--kv-blocks N] [--truthgpt PATH]

A measurement, not a CI test. Only loopback traffic; the server is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def status(pid: int) -> dict[str, int]:
    """The /proc/PID/status fields in kB we read, as bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def prompts(n: int, chars: int) -> list[str]:
    """n passages of `chars` characters from the plays, each different (no shared prefix cache)."""
    text = (ROOT / "data" / "shakespeare" / "hamlet.txt").read_text(encoding="utf-8")
    return [text[5000 + i * 997: 5000 + i * 997 + chars] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--truthgpt", type=Path,
                    default=Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "truthgpt")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt-chars", type=int, default=400)
    ap.add_argument("--max-batch", type=int)
    ap.add_argument("--kv-blocks", type=int)
    ap.add_argument("--interval", type=float, default=0.05)
    a = ap.parse_args()
    if not a.truthgpt.exists():
        sys.exit(f"no {a.truthgpt}: cargo build --release -p truthgpt")
    cmd = [str(a.truthgpt), "serve", "--model", str(a.model), "--port", "0"]
    if a.max_batch:
        cmd += ["--max-batch", str(a.max_batch)]
    if a.kv_blocks:
        cmd += ["--kv-blocks", str(a.kv_blocks)]
    env = dict(os.environ, RUST_LOG="warn")
    t0 = time.time()
    server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        for line in server.stderr:
            if "http://" in line:
                url = "http://" + line.split("http://", 1)[1].split()[0].rstrip(".,")
                break
        if url is None:
            sys.exit("the server exited before listening")
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
        while True:
            try:
                get(url + "/ready")
                break
            except Exception:
                if server.poll() is not None or time.time() - t0 > 600:
                    sys.exit("the server did not become ready")
                time.sleep(0.2)
        ready_s = time.time() - t0
        idle = status(server.pid)
        model_id = json.loads(get(url + "/v1/models"))["data"][0]["id"]

        samples, kv_peak, used_peak, stop = [], [0.0], [0.0], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(status(server.pid))
                try:
                    m = get(url + "/metrics", timeout=2)
                    kv_peak[0] = max(kv_peak[0], metric(m, "kv_bytes_allocated") or 0.0)
                    used_peak[0] = max(used_peak[0], metric(m, "kv_blocks_used") or 0.0)
                except Exception:
                    pass
                time.sleep(a.interval)

        def complete(prompt: str) -> tuple[int, int]:
            body = json.dumps({"model": model_id, "prompt": prompt, "max_tokens": a.max_tokens,
                               "temperature": 0}).encode()
            req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as r:
                usage = json.loads(r.read())["usage"]
                return usage["prompt_tokens"], usage["completion_tokens"]

        sampler = threading.Thread(target=sample)
        sampler.start()
        t1 = time.time()
        with ThreadPoolExecutor(a.concurrency) as pool:
            usages = list(pool.map(complete, prompts(a.requests, a.prompt_chars)))
        prompt_tokens, tokens = sum(u[0] for u in usages), sum(u[1] for u in usages)
        load_s = time.time() - t1
        time.sleep(0.3)
        stop.set()
        sampler.join()
        metrics = get(url + "/metrics")
        kv_peak[0] = max(kv_peak[0], metric(metrics, "kv_bytes_allocated") or 0.0)
        final = status(server.pid)
        blocks_total = metric(metrics, "kv_blocks_total")
        block_bytes = metric(metrics, "kv_block_bytes")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    file_bytes = a.model.stat().st_size
    peak = lambda k: max([s.get(k, 0) for s in samples] + [final.get(k, 0)])
    kv = int(kv_peak[0])
    out = dict(
        model=str(a.model), file_bytes=file_bytes, requests=a.requests, concurrency=a.concurrency,
        max_tokens=a.max_tokens, prompt_tokens=prompt_tokens, completion_tokens=tokens, ready_s=round(ready_s, 1), load_s=round(load_s, 1),
        kv_bytes_peak=kv, kv_blocks_used_peak=int(used_peak[0]),
        kv_capacity_bytes=int(blocks_total * block_bytes) if blocks_total and block_bytes else None,
        idle_rss_bytes=idle.get("VmRSS"), idle_rss_anon_bytes=idle.get("RssAnon"), vmhwm_bytes=final["VmHWM"],
        rss_anon_peak_bytes=peak("RssAnon"), rss_file_peak_bytes=peak("RssFile"),
        ratio=round(final["VmHWM"] / (file_bytes + kv), 3),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
