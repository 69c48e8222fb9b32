"""Benchmarks: this project's move against s5cmd, rclone and the AWS CLI on one S3
server, in one run on one machine.

Usage: python bench/run.py [--files 10000] [--large 20] [--runs 3]   (make bench)
       python bench/run.py --smoke                                    (make bench-smoke)

The full run starts Garage (a production S3 server) and moto (for the status table's
DynamoDB), each pinned to core 0 while the movers run on core 1, and for every mover,
`--runs` times: empties the bucket, seeds the same data set under raw/, moves it to
refined/, checks that every object arrived and none is left, and reads from Garage's
metrics how many S3 requests the move sent. It then measures each function's cold
start and peak memory against a minimal Lambda runtime API, and times the whole
workflow (state machine included) on the local stack. Results go to bench/results/
(results.md, results.json, chart.png) with the machine's description.

--smoke is what CI runs so the benchmark cannot rot: 200 objects on moto's S3, this
project's mover and s5cmd only, one run each, results under .tools/bench-smoke/.
"""

import argparse
import concurrent.futures
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, ".tools")
BENCH_VENV = os.path.join(TOOLS, "bench")
BUCKET = "bench"
REGION = "us-east-1"
KIB = 1024
MIB = 1024 * KIB
SERVER_CPU, MOVER_CPU = "0", "1"


def log(message):
    print(f"[bench] {message}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def pinned(cpu, command):
    """The command, pinned to one core when the machine has more than one."""
    if os.cpu_count() and os.cpu_count() > 1 and shutil.which("taskset"):
        return ["taskset", "-c", cpu, *command]
    return command


def tool(name):
    for path in (os.path.join(BENCH_VENV, "bin", name), os.path.join(TOOLS, "rclone", "usr", "bin", name),
                 os.path.join(TOOLS, "garage", "bin", name)):
        if os.path.exists(path):
            return path
    raise RuntimeError(f"{name} is not installed under .tools (run `make bench`)")


class Processes:
    """Children started by the benchmark, stopped together."""

    def __init__(self):
        self.children = []

    def start(self, command, log_file, env=None, cwd=ROOT):
        out = open(log_file, "w")
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                 start_new_session=True)
        self.children.append(child)
        return child

    def stop(self):
        for child in reversed(self.children):
            try:
                os.killpg(child.pid, signal.SIGTERM)
                child.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


# ---------------------------------------------------------------- servers

class Garage:
    def __init__(self, processes, workdir):
        self.dir = os.path.join(workdir, "garage")
        os.makedirs(self.dir, exist_ok=True)
        self.s3_port, rpc_port, self.admin_port = free_port(), free_port(), free_port()
        self.metrics_token = secrets.token_hex(16)
        self.config = os.path.join(self.dir, "garage.toml")
        with open(self.config, "w") as f:
            f.write(f"""metadata_dir = "{self.dir}/meta"
data_dir = "{self.dir}/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secrets.token_hex(32)}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{self.s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{self.admin_port}"
metrics_token = "{self.metrics_token}"
admin_token = "{secrets.token_hex(16)}"
""")
        self.binary = tool("garage")
        processes.start(pinned(SERVER_CPU, [self.binary, "-c", self.config, "server"]),
                        os.path.join(self.dir, "garage.log"))
        wait_for_port(self.s3_port)
        wait_for_port(self.admin_port)
        node = self.cli("node", "id", "-q").split("@")[0]
        self.cli("layout", "assign", "-z", "dc1", "-c", "10G", node)
        self.cli("layout", "apply", "--version", "1")
        created = self.cli("key", "create", "bench")
        self.key_id = re.search(r"Key ID:\s*(\S+)", created).group(1)
        self.secret = re.search(r"Secret key:\s*(\S+)", created).group(1)
        self.cli("bucket", "create", BUCKET)
        self.cli("bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "bench")
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"

    def cli(self, *args):
        for attempt in range(50):
            done = subprocess.run([self.binary, "-c", self.config, *args], capture_output=True, text=True)
            if done.returncode == 0:
                return done.stdout
            time.sleep(0.2)
        raise RuntimeError(f"garage {' '.join(args)}: {done.stderr}")

    def requests(self):
        """S3 requests Garage has answered so far, by API endpoint."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}/metrics",
                                         headers={"Authorization": f"Bearer {self.metrics_token}"})
        counts = {}
        for line in urllib.request.urlopen(request).read().decode().splitlines():
            match = re.match(r'api_s3_request_counter\{.*api_endpoint="(\w+)".*\}\s+(\d+)', line)
            if match:
                counts[match.group(1)] = counts.get(match.group(1), 0) + int(match.group(2))
        return counts

    def credentials(self):
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret}


class Moto:
    """moto's server: the status table's DynamoDB (and S3, for the smoke run)."""

    def __init__(self, processes, workdir):
        self.port = free_port()
        processes.start(pinned(SERVER_CPU, [os.path.join(TOOLS, "venv", "bin", "python"),
                                            "local/moto_server.py", str(self.port)]),
                        os.path.join(workdir, "moto.log"))
        wait_for_port(self.port)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def requests(self):
        return None

    def credentials(self):
        return {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


# ---------------------------------------------------------------- data and movers

def data_set(workdir, files, large):
    """The files to seed: `files` of 1 KiB and `large` of 8 MiB, written once."""
    source = os.path.join(workdir, "data")
    if not os.path.exists(source):
        os.makedirs(source)
        for i in range(files):
            with open(os.path.join(source, f"part-{i:06d}.csv"), "wb") as f:
                f.write((f"{i},".encode() * KIB)[:KIB])
        for i in range(large):
            with open(os.path.join(source, f"large-{i:03d}.csv"), "wb") as f:
                f.write(os.urandom(8 * MIB))
    return source


class Bench:
    def __init__(self, s3, moto, workdir, files, large):
        self.s3, self.moto, self.workdir = s3, moto, workdir
        self.objects = files + large
        self.source = data_set(workdir, files, large)
        self.env = dict(os.environ, AWS_REGION=REGION, AWS_DEFAULT_REGION=REGION,
                        AWS_ENDPOINT_URL_S3=s3.endpoint, **s3.credentials())
        self.env.pop("AWS_CA_BUNDLE", None)  # rclone 1.60 fails on it
        self.env.pop("AWS_ENDPOINT_URL", None)

    def s5cmd(self, *args):
        done = subprocess.run([tool("s5cmd"), "--endpoint-url", self.s3.endpoint, *args],
                              env=self.env, capture_output=True, text=True)
        if done.returncode != 0 and "no object found" not in done.stderr:
            raise RuntimeError(f"s5cmd {' '.join(args)}: {done.stderr[-500:]}")
        return done.stdout

    def count(self, prefix):
        return len([l for l in self.s5cmd("ls", f"s3://{BUCKET}/{prefix}*").splitlines() if l.strip()])

    def reseed(self):
        self.s5cmd("rm", f"s3://{BUCKET}/*")
        self.s5cmd("cp", os.path.join(self.source, "*"), f"s3://{BUCKET}/raw/")
        seeded = self.count("raw/")
        if seeded != self.objects:
            raise RuntimeError(f"seeded {seeded} objects, not {self.objects}")

    def movers(self, which):
        table_env = dict(self.env, AWS_ENDPOINT_URL_DYNAMODB=self.moto.endpoint,
                         TABLE_NAME=f"bench-status-{secrets.token_hex(4)}", SOURCE_BUCKET=BUCKET,
                         SUFFIXES=".csv", S3_FORCE_PATH_STYLE="true", SLAVE_FUNCTION="slave",
                         AWS_ACCESS_KEY_ID=self.env["AWS_ACCESS_KEY_ID"])
        # moto takes any credentials; DynamoDB requests are signed with the S3 keys.
        rclone_env = dict(self.env, RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other",
                          RCLONE_CONFIG_BENCH_ENDPOINT=self.s3.endpoint, RCLONE_CONFIG_BENCH_REGION=REGION,
                          RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=self.env["AWS_ACCESS_KEY_ID"],
                          RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=self.env["AWS_SECRET_ACCESS_KEY"],
                          RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true")
        all_movers = {
            "s3-transfer-flow": (lambda run: [xtask_binary(), "bench-move", f"bench-{run}"], table_env),
            "s5cmd": (lambda run: [tool("s5cmd"), "--endpoint-url", self.s3.endpoint, "mv",
                                   f"s3://{BUCKET}/raw/*", f"s3://{BUCKET}/refined/"], self.env),
            "rclone": (lambda run: [tool("rclone"), "move", f"bench:{BUCKET}/raw", f"bench:{BUCKET}/refined",
                                    "--transfers", "16", "--checkers", "16"], rclone_env),
            "aws s3 mv": (lambda run: [tool("aws"), "--endpoint-url", self.s3.endpoint, "s3", "mv",
                                       "--recursive", "--only-show-errors", f"s3://{BUCKET}/raw/",
                                       f"s3://{BUCKET}/refined/"], self.env),
        }
        return {name: all_movers[name] for name in which}

    def measure(self, name, command, env, run):
        self.reseed()
        before = self.s3.requests()
        started = time.perf_counter()
        done = subprocess.run(pinned(MOVER_CPU, command(run)), env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        after = self.s3.requests()
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed: {done.stderr[-1000:]}")
        moved, left = self.count("refined/"), self.count("raw/")
        if (moved, left) != (self.objects, 0):
            raise RuntimeError(f"{name} left {left} objects and moved {moved} of {self.objects}")
        requests = None
        if before is not None:
            requests = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        log(f"{name} run {run + 1}: {seconds:.2f} s, {self.objects / seconds:.0f} objects/s"
            + (f", {sum(requests.values()) / self.objects:.3f} requests/object {requests}" if requests else ""))
        return {"seconds": seconds, "requests": requests}


def xtask_binary():
    return os.path.join(ROOT, "target", os.environ.get("BENCH_PROFILE", "release"), "xtask")


# ---------------------------------------------------------------- cold start and memory

class RuntimeApi(BaseHTTPRequestHandler):
    """The Lambda runtime API, enough for one invocation; also a Lambda Invoke endpoint
    that accepts asynchronous invocations and keeps their payloads."""

    protocol_version = "HTTP/1.1"
    event = b"{}"
    first_poll = None
    answered = None
    answer = None
    invoked = []
    served = False

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        cls = type(self)
        if self.path.endswith("/runtime/invocation/next"):
            if cls.first_poll is None:
                cls.first_poll = time.perf_counter()
            if cls.served:
                time.sleep(3600)  # the process is stopped before this returns
            cls.served = True
            deadline = str(int(time.time() * 1000) + 900_000)
            return self.reply(200, cls.event, [
                ("Lambda-Runtime-Aws-Request-Id", "bench-1"), ("Lambda-Runtime-Deadline-Ms", deadline),
                ("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:bench"),
                ("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000"),
                ("Content-Type", "application/json")])
        self.reply(404)

    def do_POST(self):
        cls = type(self)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "/runtime/" in self.path:
            cls.answered, cls.answer = time.perf_counter(), (self.path.rsplit("/", 1)[1], body)
            return self.reply(202, b"{}")
        if self.path.startswith("/2015-03-31/functions/"):
            cls.invoked.append(body)
            return self.reply(202)
        self.reply(404)


def invoke_once(binary, env, event, handle):
    """Starts the function against a fresh runtime API; returns (cold start in ms, peak
    RSS in MB after handling the event (or None), the answer)."""
    RuntimeApi.event, RuntimeApi.first_poll, RuntimeApi.answered, RuntimeApi.served = event, None, None, False
    server = ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApi)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"127.0.0.1:{server.server_address[1]}"
    env = dict(env, AWS_LAMBDA_RUNTIME_API=api, AWS_LAMBDA_FUNCTION_NAME="bench",
               AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256", AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
               AWS_ENDPOINT_URL_LAMBDA=f"http://{api}", RUST_LOG="warn")
    started = time.perf_counter()
    child = subprocess.Popen(pinned(MOVER_CPU, [binary]), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        while RuntimeApi.first_poll is None or (handle and RuntimeApi.answered is None):
            if child.poll() is not None:
                raise RuntimeError(f"{binary} exited with {child.returncode}")
            if time.perf_counter() - started > 300:
                raise RuntimeError(f"{binary} did not answer")
            time.sleep(0.0005)
        peak = None
        if handle:
            status = open(f"/proc/{child.pid}/status").read()
            peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
        return (RuntimeApi.first_poll - started) * 1000, peak, RuntimeApi.answer
    finally:
        child.kill()
        child.wait()
        server.shutdown()


def functions_profile(bench, runs):
    """Cold start of each function, and peak memory of master listing 1,000 files and
    of slave moving them in one 1,000-key batch."""
    binaries = {name: os.path.join(ROOT, "target", os.environ.get("BENCH_PROFILE", "release"), name)
                for name in ("master", "slave", "status")}
    env = dict(bench.env, AWS_ENDPOINT_URL_DYNAMODB=bench.moto.endpoint, TABLE_NAME=f"cold-{secrets.token_hex(4)}",
               SOURCE_BUCKET=BUCKET, S3_FORCE_PATH_STYLE="true", SLAVE_FUNCTION="slave", BATCH_SIZE="1000",
               ACTIVITY_ARN="arn:aws:states:us-east-1:123456789012:activity:bench",
               AWS_ENDPOINT_URL_SFN=bench.moto.endpoint)
    subprocess.run([xtask_binary(), "create-table"], env=env, check=True, capture_output=True)
    profile = {}
    for name, binary in binaries.items():
        cold = [invoke_once(binary, env, b"{}", handle=False)[0] for _ in range(runs)]
        profile[name] = {"cold_start_ms": statistics.median(cold)}
    # 1,000 files under raw/: master lists and records them and invokes slave once.
    bench.s5cmd("rm", f"s3://{BUCKET}/*")
    bench.s5cmd("cp", os.path.join(bench.source, "part-000*"), f"s3://{BUCKET}/raw/")
    RuntimeApi.invoked = []
    _, peak, answer = invoke_once(binaries["master"], env, b'{"run_id": "memory"}', handle=True)
    if answer[0] != "response" or len(RuntimeApi.invoked) != 1:
        raise RuntimeError(f"master: {answer} with {len(RuntimeApi.invoked)} invocations")
    profile["master"]["peak_mb"] = peak
    batch = RuntimeApi.invoked[0]
    keys = len(json.loads(batch)["keys"])
    _, peak, answer = invoke_once(binaries["slave"], env, batch, handle=True)
    result = json.loads(answer[1])
    if answer[0] != "response" or result.get("completed") != keys:
        raise RuntimeError(f"slave: {answer}")
    profile["slave"]["peak_mb"] = peak
    profile["slave"]["batch_keys"] = keys
    for name, p in profile.items():
        log(f"{name}: cold start {p['cold_start_ms']:.1f} ms" + (f", peak {p['peak_mb']:.1f} MB" if "peak_mb" in p else ""))
    return profile


# ---------------------------------------------------------------- the whole workflow

def whole_workflow(workdir, files, large):
    """The same data set through the state machine on the local stack (moto's S3), and
    this project's bare move on the same S3, for comparison."""
    processes = Processes()
    state = os.path.join(workdir, "stack")
    port = free_port()
    try:
        processes.start([os.path.join(TOOLS, "venv", "bin", "python"), "local/stack.py", "run", state,
                         "--port", str(port), "--lambda-port", str(free_port()), "--bucket", BUCKET,
                         "--stack", "bench", "--release"], os.path.join(workdir, "stack.log"))
        deadline = time.monotonic() + 900
        while not os.path.exists(os.path.join(state, "ready")):
            if time.monotonic() > deadline:
                raise RuntimeError("the local stack did not start")
            time.sleep(0.5)
        env = dict(os.environ)
        for line in open(os.path.join(state, "env")):
            if line.startswith("export "):
                name, _, value = line[7:].strip().partition("=")
                env[name] = value.strip("'")
        env.pop("AWS_CA_BUNDLE", None)

        class LocalS3:
            endpoint = env["AWS_ENDPOINT_URL"]

            def requests(self):
                return None

            def credentials(self):
                return {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}

        bench = Bench(LocalS3(), LocalS3(), workdir, files, large)
        bench.reseed()
        started = time.perf_counter()
        done = subprocess.run([os.path.join(ROOT, "target", os.environ.get("BENCH_PROFILE", "release"), "run-transfer"),
                               "--input", '{"wait_before_master_seconds": 0, "wait_before_status_seconds": 0}'],
                              env=env, capture_output=True, text=True)
        workflow = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"run-transfer: {done.stdout[-1000:]} {done.stderr[-1000:]}")
        log(f"whole workflow on the local stack: {workflow:.2f} s")
        bench.moto = type("Dynamo", (), {"endpoint": env["AWS_ENDPOINT_URL"]})()
        bare = bench.measure("s3-transfer-flow (bare, local stack's S3)", *bench.movers(["s3-transfer-flow"])["s3-transfer-flow"], 0)
        return {"workflow_seconds": workflow, "bare_seconds": bare["seconds"]}
    finally:
        processes.stop()


# ---------------------------------------------------------------- report

def machine():
    cpu = "unknown CPU"
    try:
        cpu = re.search(r"model name\s*:\s*(.+)", open("/proc/cpuinfo").read()).group(1)
    except (OSError, AttributeError):
        pass
    memory = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1)) // (1024 * 1024)
    return f"{cpu}, {os.cpu_count()} cores, {memory} GiB, {platform.system()} {platform.release()}"


def versions():
    def first_line(command):
        try:
            return subprocess.run(command, capture_output=True, text=True).stdout.splitlines()[0].strip()
        except (OSError, IndexError):
            return "?"
    return {
        "garage": first_line([tool("garage"), "--version"]) if os.path.exists(os.path.join(TOOLS, "garage", "bin", "garage")) else "-",
        "s5cmd": first_line([tool("s5cmd"), "version"]),
        "rclone": first_line([tool("rclone"), "version"]) if os.path.exists(os.path.join(TOOLS, "rclone")) else "-",
        "aws": first_line([tool("aws"), "--version"]) if os.path.exists(os.path.join(BENCH_VENV, "bin", "aws")) else "-",
    }


def report(results, out_dir, chart):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    movers = results["movers"]
    ours = movers.get("s3-transfer-flow")
    lines = [
        f"# Benchmark results, {results['date']}",
        "",
        f"Machine: {results['machine']}. S3 server: {results['server']}; the server on core "
        f"{SERVER_CPU}, each mover on core {MOVER_CPU}. Data set: {results['objects']} objects "
        f"({results['files']} of 1 KiB, {results['large']} of 8 MiB) under raw/, moved to refined/; "
        f"median of {results['runs']} runs, reseeded before each. Tools: "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        "",
        "| mover | seconds (median) | objects/s | vs s3-transfer-flow | S3 requests per object |",
        "|---|---|---|---|---|",
    ]
    for name, m in movers.items():
        ratio = f"{m['objects_per_second'] / ours['objects_per_second']:.2f}×" if ours else "-"
        per_object = f"{m['requests_per_object']:.3f}" if m["requests_per_object"] is not None else "-"
        lines.append(f"| {name} | {m['seconds']:.2f} | {m['objects_per_second']:.0f} | {ratio} | {per_object} |")
    if results.get("functions"):
        lines += ["", "| function | cold start (median) | peak memory |", "|---|---|---|"]
        for name, p in results["functions"].items():
            peak = f"{p['peak_mb']:.1f} MB" + (f" ({p['batch_keys']}-key batch)" if "batch_keys" in p else " (listing 1,000 files)") if "peak_mb" in p else "-"
            lines.append(f"| {name} | {p['cold_start_ms']:.1f} ms | {peak} |")
    if results.get("workflow"):
        w = results["workflow"]
        lines += ["", f"Whole workflow on the local stack (moto's S3, state machine included, waits 0): "
                      f"{w['workflow_seconds']:.2f} s; this project's bare move on the same S3: "
                      f"{w['bare_seconds']:.2f} s (target: within 2 s + 1.2 × bare = "
                      f"{2 + 1.2 * w['bare_seconds']:.2f} s)."]
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if chart:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        names = list(movers)
        figure, (speed, requests) = plt.subplots(1, 2, figsize=(10, 3.5))
        speed.barh(names, [movers[n]["objects_per_second"] for n in names], color="#3b7dd8")
        speed.set_xlabel("objects per second (higher is better)")
        requests.barh(names, [movers[n]["requests_per_object"] or 0 for n in names], color="#d8823b")
        requests.set_xlabel("S3 requests per object (lower is better)")
        requests.set_yticks([])
        figure.suptitle(f"{results['objects']} objects on {results['server']}, {results['date']}")
        figure.tight_layout()
        figure.savefig(os.path.join(out_dir, "chart.png"), dpi=120)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.files, args.large, args.runs = 200, 0, 1
    workdir = os.path.join(TOOLS, "bench-smoke" if args.smoke else "bench-work")
    shutil.rmtree(os.path.join(workdir, "garage"), ignore_errors=True)
    os.makedirs(workdir, exist_ok=True)
    processes = Processes()
    try:
        moto = Moto(processes, workdir)
        s3 = moto if args.smoke else Garage(processes, workdir)
        if args.smoke:
            subprocess.run([os.path.join(TOOLS, "venv", "bin", "python"), "-c",
                            f"import boto3; boto3.client('s3', endpoint_url='{moto.endpoint}', region_name='{REGION}',"
                            f" aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket='{BUCKET}')"],
                           check=True)
        bench = Bench(s3, moto, workdir, args.files, args.large)
        names = ["s3-transfer-flow", "s5cmd"] if args.smoke else ["s3-transfer-flow", "s5cmd", "rclone", "aws s3 mv"]
        movers = {}
        for name, (command, env) in bench.movers(names).items():
            runs = [bench.measure(name, command, env, run) for run in range(args.runs)]
            seconds = statistics.median(r["seconds"] for r in runs)
            requests = [sum(r["requests"].values()) for r in runs if r["requests"]]
            movers[name] = {
                "seconds": seconds, "objects_per_second": bench.objects / seconds,
                "requests_per_object": statistics.median(requests) / bench.objects if requests else None,
                "requests": runs[0]["requests"],
            }
        functions = None if args.smoke else functions_profile(bench, 5)
    finally:
        processes.stop()
    workflow = None if args.smoke else whole_workflow(workdir, args.files, args.large)
    results = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(),
        "server": "moto (smoke run)" if args.smoke else "Garage", "files": args.files, "large": args.large,
        "objects": args.files + args.large, "runs": args.runs, "movers": movers,
        "functions": functions, "workflow": workflow,
    }
    report(results, workdir if args.smoke else os.path.join(ROOT, "bench", "results"), chart=not args.smoke)
    ours, s5cmd = movers["s3-transfer-flow"], movers["s5cmd"]
    log(f"s3-transfer-flow moves {ours['objects_per_second'] / s5cmd['objects_per_second']:.2f}× as many "
        f"objects per second as s5cmd")


if __name__ == "__main__":
    main()
