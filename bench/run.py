"""Benchmarks: this project's move against s5cmd, rclone and the AWS CLI on one S3
server, beside a bare copy of the same objects (s5cmd cp: one CopyObject each, nothing
deleted), in one run on one machine; the functions' cold starts and peak memory; and the
whole workflow on the local stack.

Usage: python -m bench.run [--files 10000] [--large 20] [--runs 3] [--movers NAME,...]
                           [--lambdas 8] [--no-functions] [--no-workflow]
                           [--no-verification] [--no-large] [--large-objects 4]
                           [--large-mib 1024]                                (make bench)
       python -m bench.run --smoke [--profile debug]                        (make bench-smoke)

The full run starts Garage (a production S3 server) on core 0, and moto for the status
table's DynamoDB on core 1, where each mover runs too. For every mover, `--runs` times:
empty the bucket, seed the same data set under raw/, move it to refined/, check that
every object arrived with its bytes (by ETag) and none is left, and read from Garage's
metrics how many S3 requests the move sent, and from /proc how much CPU the server and the
mover used. This project's mover is `xtask bench-move`:
master's and slave's own code, driving a whole run's batches as the Lambdas would,
status table included.

Then it measures each function's cold start (process start to its first request to the
Lambda runtime API) and peak memory (master listing 1,000 files, slave moving them as
one 1,000-file batch) under local Lambda (local/lambdas.py), and times the whole
workflow on the local stack (bench/stack.py), state machine included, with the functions'
S3 on Garage: when each part of the run happened and the CPU each process used.
Then it moves a second data set, large objects (4 of 1 GiB by default), on Garage and on
moto's S3, which copies bytes where Garage copies by reference: this project's mover with
its multipart threshold and part size at their defaults, and again copying each object
whole, s5cmd and rclone. Last, it moves objects copied in parts (6 of 24 MiB, 8 MiB
parts) on moto's S3, which
copies bytes, twice: verified by the source's full-object checksum, and verified by size
and ETag. Results go to bench/results/ (results.md, results.json, chart.png) with the
machine's description.

--smoke is what CI runs so the benchmark cannot rot: 200 objects on moto's S3, this
project's mover and s5cmd only, one run each, and 2 objects copied in parts each way;
results under .tools/bench-smoke/.
"""

import argparse
import json
import os
import platform
import queue
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import threading
import time
import urllib.request

from local import lambdas  # local Lambda, shared with the local stack
from local.stack import free_port, wait_for_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, ".tools")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))

BUCKET = "bench"
REGION = "us-east-1"
KIB = 1024
MIB = 1024 * KIB
SERVER_CPU, MOVER_CPU = "0", "1"
MOVERS = ("s3-transfer-flow", "s5cmd", "rclone", "aws s3 mv", "bare copy (s5cmd cp)")
# Copies every object and deletes nothing: the floor a move is measured against.
BARE_COPY = "bare copy (s5cmd cp)"


def log(message):
    print(f"[bench] {message}", flush=True)


def pinned(cpu, command):
    """The command, pinned to one core when the machine has more than one."""
    if (os.cpu_count() or 1) > 1 and shutil.which("taskset"):
        return ["taskset", "-c", cpu, *command]
    return command


def tool(name):
    for path in (os.path.join(TOOLS, "bench", "bin", name),
                 os.path.join(TOOLS, "rclone", "usr", "bin", name),
                 os.path.join(TOOLS, "garage", "bin", name)):
        if os.path.exists(path):
            return path
    raise RuntimeError(f"{name} is not installed under .tools (run `make bench`)")


def process_cpu_seconds(pid):
    """User and system CPU seconds of a process, all its threads; None once it is gone."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median_run(measured):
    """The run whose seconds are the median, the lower of the middle two for an even
    count, so that its other figures are of the same run."""
    seconds = statistics.median_low(m["seconds"] for m in measured)
    return next(m for m in measured if m["seconds"] == seconds)


class Processes:
    """Children started by the benchmark, stopped together."""

    def __init__(self):
        self.children = []

    def start(self, command, log_file, env=None):
        out = open(log_file, "w")
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
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
        self.children = []


# ---------------------------------------------------------------- servers

class Garage:
    """Garage, one node, its S3 API on a free port; counts requests from its metrics."""

    name = "Garage"
    core = SERVER_CPU

    def __init__(self, processes, workdir):
        self.dir = os.path.join(workdir, "garage")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
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
        self.pid = processes.start(pinned(SERVER_CPU, [self.binary, "-c", self.config, "server"]),
                                   os.path.join(self.dir, "garage.log")).pid
        wait_for_port(self.s3_port, 60)
        wait_for_port(self.admin_port, 60)
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
        for _ in range(50):
            done = subprocess.run([self.binary, "-c", self.config, *args], capture_output=True, text=True)
            if done.returncode == 0:
                return done.stdout
            time.sleep(0.2)
        raise RuntimeError(f"garage {' '.join(args)}: {done.stderr}")

    def version(self):
        # "garage cargo:2.5.0 [features: ...]"
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        return "Garage " + out.split("[")[0].split(":")[-1].strip()

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
    """moto's server: the status table's DynamoDB (and the smoke run's S3)."""

    name = "moto"

    def __init__(self, processes, workdir, cpu):
        self.core = cpu
        self.port = free_port()
        self.pid = processes.start(pinned(cpu, [os.path.join(TOOLS, "venv", "bin", "python"),
                                                "-m", "local.moto_server", str(self.port)]),
                                   os.path.join(workdir, "moto.log")).pid
        wait_for_port(self.port, 60)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def version(self):
        out = subprocess.run([os.path.join(TOOLS, "venv", "bin", "python"), "-c",
                              "import moto; print(moto.__version__)"], capture_output=True, text=True)
        return f"moto {out.stdout.strip()}"

    def requests(self):
        return None

    def credentials(self):
        return {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}

    def create_bucket(self):
        subprocess.run([os.path.join(TOOLS, "venv", "bin", "python"), "-c",
                        f"import boto3; boto3.client('s3', endpoint_url='{self.endpoint}', "
                        f"region_name='{REGION}', aws_access_key_id='test', "
                        f"aws_secret_access_key='test').create_bucket(Bucket='{BUCKET}')"],
                       check=True)


# ---------------------------------------------------------------- data and movers

def data_set(workdir, files, large):
    """The files to seed, `files` of 1 KiB and `large` of 8 MiB, written once; returns
    the directory and each file's MD5 (its ETag once uploaded whole)."""
    source = os.path.join(workdir, f"data-{files}-{large}")
    if not os.path.exists(source):
        os.makedirs(source + ".partial", exist_ok=True)
        for i in range(files):
            with open(os.path.join(source + ".partial", f"part-{i:06d}.csv"), "wb") as f:
                f.write((f"{i},".encode() * KIB)[:KIB])
        for i in range(large):
            with open(os.path.join(source + ".partial", f"large-{i:03d}.csv"), "wb") as f:
                f.write(os.urandom(8 * MIB))
        os.rename(source + ".partial", source)
    return source


class Bench:
    def __init__(self, s3, table, workdir, files, large, profile, lambdas_at_once):
        self.s3, self.table = s3, table
        self.objects = files + large
        self.profile = profile
        self.lambdas = lambdas_at_once
        self.source = data_set(workdir, files, large)
        self.env = dict(os.environ, AWS_REGION=REGION, AWS_DEFAULT_REGION=REGION,
                        AWS_ENDPOINT_URL_S3=s3.endpoint, **s3.credentials())
        self.env.pop("AWS_CA_BUNDLE", None)  # rclone 1.60 fails on it
        self.env.pop("AWS_ENDPOINT_URL", None)
        self.expected = None

    def s5cmd(self, *args):
        done = subprocess.run([tool("s5cmd"), "--endpoint-url", self.s3.endpoint, *args],
                              env=self.env, capture_output=True, text=True)
        if done.returncode != 0 and "no object found" not in done.stderr:
            raise RuntimeError(f"s5cmd {' '.join(args)}: {done.stderr[-500:]}")
        return done.stdout

    def listing(self, prefix):
        """Key (under `prefix`) -> ETag of what the bucket holds."""
        out = self.s5cmd("ls", "--etag", f"s3://{BUCKET}/{prefix}*")
        found = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 5:
                found[parts[-1]] = parts[-2].strip('"')
        return found

    def reseed(self):
        self.s5cmd("rm", f"s3://{BUCKET}/*")
        self.s5cmd("cp", os.path.join(self.source, "*"), f"s3://{BUCKET}/raw/")
        seeded = self.listing("raw/")
        if len(seeded) != self.objects:
            raise RuntimeError(f"seeded {len(seeded)} objects, not {self.objects}")
        if self.expected is None:
            self.expected = seeded
        elif seeded != self.expected:
            raise RuntimeError("the data set changed between runs")

    def check_moved(self, name, copy_only=False):
        moved, left = self.listing("refined/"), self.listing("raw/")
        if copy_only:
            if moved != self.expected or left != self.expected:
                raise RuntimeError(f"{name}: {len(moved)} objects copied of {len(self.expected)}, "
                                   f"{len(left)} left at the source")
            return
        if left or moved != self.expected:
            missing = len(set(self.expected) - set(moved))
            raise RuntimeError(f"{name}: {len(left)} objects left at the source, {missing} missing "
                               f"at the destination, {len(moved)} there")

    def movers(self, which, source="raw/", destination="refined/"):
        ours = dict(self.env, AWS_ENDPOINT_URL_DYNAMODB=self.table.endpoint,
                    TABLE_NAME=f"bench-status-{secrets.token_hex(4)}", SOURCE_BUCKET=BUCKET,
                    SOURCE_PREFIX=source, DESTINATION_PREFIX=destination,
                    SUFFIXES=".csv", S3_FORCE_PATH_STYLE="true", SLAVE_FUNCTION="slave")
        rclone = dict(self.env, RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other",
                      RCLONE_CONFIG_BENCH_ENDPOINT=self.s3.endpoint, RCLONE_CONFIG_BENCH_REGION=REGION,
                      RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=self.env["AWS_ACCESS_KEY_ID"],
                      RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=self.env["AWS_SECRET_ACCESS_KEY"],
                      RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true")
        everything = {
            "s3-transfer-flow": (lambda run: [binary(self.profile, "xtask"), "bench-move",
                                              f"bench-{run}", str(self.lambdas)], ours),
            "s5cmd": (lambda run: [tool("s5cmd"), "--endpoint-url", self.s3.endpoint, "mv",
                                   f"s3://{BUCKET}/{source}*", f"s3://{BUCKET}/{destination}"], self.env),
            "rclone": (lambda run: [tool("rclone"), "move", f"bench:{BUCKET}/{source.rstrip('/')}",
                                    f"bench:{BUCKET}/{destination.rstrip('/')}",
                                    "--transfers", "16", "--checkers", "16"], rclone),
            "aws s3 mv": (lambda run: [tool("aws"), "--endpoint-url", self.s3.endpoint, "s3", "mv",
                                       "--recursive", "--only-show-errors", f"s3://{BUCKET}/{source}",
                                       f"s3://{BUCKET}/{destination}"], self.env),
            BARE_COPY: (lambda run: [tool("s5cmd"), "--endpoint-url", self.s3.endpoint, "cp",
                                     f"s3://{BUCKET}/{source}*", f"s3://{BUCKET}/{destination}"], self.env),
        }
        return {name: everything[name] for name in which}

    def sizes(self, prefix):
        """Key (under `prefix`) -> size of what the bucket holds."""
        found = {}
        for line in self.s5cmd("ls", f"s3://{BUCKET}/{prefix}*").splitlines():
            parts = line.split()
            if len(parts) >= 4:
                found[parts[-1]] = int(parts[-2])
        return found

    def measure(self, name, command, env, run):
        self.reseed()
        before = self.s3.requests()
        server_before = process_cpu_seconds(self.s3.pid)
        mover_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(pinned(MOVER_CPU, command(run)), env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        mover_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu = process_cpu_seconds(self.s3.pid) - server_before
        after = self.s3.requests()
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed: {done.stderr[-1000:]}")
        self.check_moved(name, copy_only=name == BARE_COPY)
        mover_cpu = (mover_after.ru_utime + mover_after.ru_stime
                     - mover_before.ru_utime - mover_before.ru_stime)
        requests = None
        if before is not None:
            requests = {k: after.get(k, 0) - before.get(k, 0) for k in after
                        if after.get(k, 0) != before.get(k, 0)}
        log(f"{name} run {run + 1}: {seconds:.2f} s, {self.objects / seconds:.0f} objects/s, "
            f"server CPU {server_cpu:.2f} s, mover CPU {mover_cpu:.2f} s"
            + (f", {sum(requests.values()) / self.objects:.3f} requests/object {requests}"
               if requests else ""))
        return {"seconds": seconds, "requests": requests, "server_cpu_seconds": server_cpu,
                "mover_cpu_seconds": mover_cpu}

    def median_of(self, name, command, env, runs):
        measured = [self.measure(name, command, env, run) for run in range(runs)]
        # The run whose time is the median (the lower one of an even count): its server
        # and mover CPU go with it.
        middle = median_run(measured)
        seconds = middle["seconds"]
        requests = middle["requests"]
        return {
            "seconds": seconds,
            "runs": [m["seconds"] for m in measured],
            "server_busy": middle["server_cpu_seconds"] / middle["seconds"],
            "mover_busy": middle["mover_cpu_seconds"] / middle["seconds"],
            "objects_per_second": self.objects / seconds,
            "requests_per_object": sum(requests.values()) / self.objects if requests else None,
            "requests": requests,
        }


def binary(profile, name):
    path = os.path.join(TARGET, profile, name)
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is not built (cargo build --bins{' --release' if profile == 'release' else ''})")
    return path


# ---------------------------------------------------------------- cold start and memory

# The function name `accepted` invokes to mark how far the sink's output has been read.
MARKER = "bench-marker"


def accepted(sink_url, invocations):
    """The payloads `xtask invoke-sink` has accepted since the last call. It prints
    invocations in the order it accepts them, so once one sent now is read, every one
    accepted before it has been read too."""
    urllib.request.urlopen(f"{sink_url}/2015-03-31/functions/{MARKER}/invocations", data=b"{}").read()
    payloads = []
    while (invocation := invocations.get(timeout=60))["function"] != MARKER:
        payloads.append(invocation["payload"])
    return payloads


def run_function(name, profile, env, event, workdir):
    """Starts one instance of the function under local Lambda and invokes it once;
    returns (cold start in ms, peak resident memory in MB, ok, answer)."""
    local = lambdas.Lambdas(
        {name: dict(binary=binary(profile, name), environment=env, timeout=900, memory=256,
                    concurrency=1)},
        os.path.join(workdir, f"{name}.log"),
    )
    try:
        ok, answer = local.function(name).invoke(event)
        (instance,) = local.function(name).instances.values()
        status = open(f"/proc/{instance.process.pid}/status").read()
        peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
        cold = (instance.first_poll - instance.started) * 1000
        return cold, peak, ok, answer
    finally:
        local.stop()


def functions_profile(bench, workdir, runs):
    """Each function's cold start (median of `runs`), and the peak memory of master
    listing 1,000 files and of slave moving them as one batch."""
    # Master's Lambda endpoint: accepts every invocation (202) and prints it.
    sink = subprocess.Popen([binary(bench.profile, "xtask"), "invoke-sink"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    invocations = queue.Queue()
    profile = {}
    try:
        sink_url = sink.stdout.readline().strip()
        if not sink_url:
            raise RuntimeError(f"xtask invoke-sink exited with {sink.wait()}")

        def read():
            for line in sink.stdout:
                invocations.put(json.loads(line))

        threading.Thread(target=read, daemon=True).start()
        env = dict(bench.env, AWS_ENDPOINT_URL_DYNAMODB=bench.table.endpoint,
                   TABLE_NAME=f"cold-{secrets.token_hex(4)}", SOURCE_BUCKET=BUCKET, S3_FORCE_PATH_STYLE="true",
                   SLAVE_FUNCTION="slave", BATCH_SIZE="1000", RUST_LOG="warn",
                   ACTIVITY_ARN="arn:aws:states:us-east-1:123456789012:activity:bench",
                   AWS_ENDPOINT_URL_SFN=bench.table.endpoint,
                   AWS_ENDPOINT_URL_LAMBDA=sink_url)
        subprocess.run([binary(bench.profile, "xtask"), "create-table"], env=env, check=True, capture_output=True)
        for name in ("master", "slave", "status"):
            cold = [run_function(name, bench.profile, env, b"{}", workdir)[0] for _ in range(runs)]
            profile[name] = {"cold_start_ms": statistics.median(cold)}
        # 1,000 files under raw/: master records them as one batch and invokes slave once.
        bench.s5cmd("rm", f"s3://{BUCKET}/*")
        bench.s5cmd("cp", os.path.join(bench.source, "part-000*"), f"s3://{BUCKET}/raw/")
        accepted(sink_url, invocations)  # drops the cold starts' invocations, if any
        _, peak, ok, answer = run_function("master", bench.profile, env, b'{"run_id": "memory"}', workdir)
        payloads = accepted(sink_url, invocations)
        if not ok or len(payloads) != 1:
            raise RuntimeError(f"master: {answer!r} with {len(payloads)} invocations")
        profile["master"]["peak_mb"] = peak
        _, peak, ok, answer = run_function("slave", bench.profile, env, json.dumps(payloads[0]).encode(),
                                           workdir)
        moved = json.loads(answer).get("completed") if ok else None
        if moved != 1000:
            raise RuntimeError(f"slave: {answer!r}")
        profile["slave"]["peak_mb"] = peak
        profile["slave"]["batch_files"] = moved
    finally:
        sink.terminate()
        sink.wait()
    for name, p in profile.items():
        log(f"{name}: cold start {p['cold_start_ms']:.1f} ms"
            + (f", peak {p['peak_mb']:.1f} MB" if "peak_mb" in p else ""))
    return profile


# ---------------------------------------------------------------- the whole workflow

def whole_workflow(bench, workdir):
    """The data set through the state machine on the local stack (moto for DynamoDB,
    Step Functions and the front; local Lambda for the functions), with the functions'
    S3 on the same server as the movers. Returns the execution's own duration, the time
    `run-transfer` took, start to exit, when each part of the run happened, and the CPU
    seconds each process used during it."""
    from bench.stack import BenchStack, timeline  # bench.stack imports this module

    processes = Processes()
    try:
        stack = BenchStack(processes, os.path.join(workdir, "stack"), bench.s3, bench.profile, "bench")
        bench.reseed()
        stack_before, server_before = stack.cpu_seconds(), process_cpu_seconds(bench.s3.pid)
        arn, wall = stack.run("bench-workflow", {"wait_before_master_seconds": 0,
                                                 "wait_before_status_seconds": 0})
        stack_after, server_after = stack.cpu_seconds(), process_cpu_seconds(bench.s3.pid)
        probe = stack.probe(arn)
        calls = stack.calls()
    finally:
        processes.stop()
    bench.check_moved("the whole workflow")
    if probe["status"] != "SUCCEEDED":
        raise RuntimeError(f"the whole workflow: execution {probe['status']}")
    cpu = {name: seconds - stack_before.get(name, 0.0) for name, seconds in stack_after.items()}
    cpu[bench.s3.version()] = server_after - server_before
    times = timeline(probe, calls)
    log(f"whole workflow on the local stack: execution {probe['execution_seconds']:.2f} s, "
        f"run-transfer {wall:.2f} s, timeline {times}, CPU seconds {cpu}")
    return {"execution_seconds": probe["execution_seconds"], "run_transfer_seconds": wall,
            "timeline": times, "cpu_seconds": cpu}


# ---------------------------------------------------------------- verification

# Seeds, empties and checks the verification bench's bucket on moto, with boto3 from the
# local stack's environment: `seed checksum|etag DIR` uploads each file whole, with a
# CRC32 checksum S3 keeps as the object's full-object checksum or with none;
# `empty`; `check` prints {"raw": n, "refined": {key: size}}.
OBJECTS_SCRIPT = """
import json, os, sys
import boto3, botocore.config
endpoint, bucket, command = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test",
                  config=botocore.config.Config(request_checksum_calculation="when_required"))
def keys(prefix):
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}
if command == "seed":
    mode, source = sys.argv[4:6]
    extra = {"ChecksumAlgorithm": "CRC32"} if mode == "checksum" else {}
    for name in sorted(os.listdir(source)):
        with open(os.path.join(source, name), "rb") as f:
            s3.put_object(Bucket=bucket, Key="raw/" + name, Body=f.read(), **extra)
elif command == "empty":
    for key in keys(""):
        s3.delete_object(Bucket=bucket, Key=key)
elif command == "check":
    print(json.dumps({"raw": len(keys("raw/")), "refined": keys("refined/")}))
"""


def verification(bench, moto, workdir, objects, runs):
    """Copies in parts verified by the source's checksum against the same copies verified
    by size and ETag: `objects` objects of 24 MiB (above a 16 MiB multipart threshold, in
    8 MiB parts) on moto's S3, which copies bytes (Garage copies by reference and keeps no
    full-object checksums), moved by this project's mover; median of `runs` runs each."""
    source = os.path.join(workdir, f"parts-{objects}")
    if not os.path.exists(source):
        os.makedirs(source + ".partial", exist_ok=True)
        for i in range(objects):
            with open(os.path.join(source + ".partial", f"part-{i:03d}.bin"), "wb") as f:
                f.write(os.urandom(24 * MIB))
        os.rename(source + ".partial", source)
    sizes = {f"refined/{name}": os.path.getsize(os.path.join(source, name)) for name in os.listdir(source)}
    python = os.path.join(TOOLS, "venv", "bin", "python")

    def objects_call(*args):
        return subprocess.run([python, "-c", OBJECTS_SCRIPT, moto.endpoint, BUCKET, *args],
                              capture_output=True, text=True, check=True).stdout

    env = dict(bench.env, AWS_ENDPOINT_URL_S3=moto.endpoint, AWS_ENDPOINT_URL_DYNAMODB=moto.endpoint,
               **moto.credentials(), TABLE_NAME=f"bench-parts-{secrets.token_hex(4)}", SOURCE_BUCKET=BUCKET,
               SUFFIXES=".bin", S3_FORCE_PATH_STYLE="true", SLAVE_FUNCTION="slave",
               MULTIPART_THRESHOLD_BYTES=str(16 * MIB), MULTIPART_PART_SIZE_BYTES=str(8 * MIB))
    results = {"objects": objects, "object_mib": 24, "part_mib": 8, "server": moto.version()}
    measured = {"checksum": [], "etag": []}
    # The two ways in turn, each run timed by the mover itself from its first listing to
    # its last outcome (no process start, no table creation).
    for run in range(runs):
        for mode in measured:
            objects_call("empty")
            objects_call("seed", mode, source)
            done = subprocess.run(pinned(MOVER_CPU, [binary(bench.profile, "xtask"), "bench-move",
                                                     f"parts-{mode}-{run}", str(bench.lambdas)]),
                                  env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"copies in parts ({mode}) failed: {done.stderr[-1000:]}")
            moved = json.loads(done.stdout.strip().splitlines()[-1])
            check = json.loads(objects_call("check"))
            if check["raw"] or check["refined"] != sizes:
                raise RuntimeError(f"copies in parts ({mode}): {check['raw']} left at the source, "
                                   f"{len(check['refined'])} of {objects} at the destination")
            verified = moved["by_checksum"]
            if verified != (objects if mode == "checksum" else 0):
                raise RuntimeError(f"copies in parts ({mode}): {verified} of {objects} verified by checksum")
            log(f"copies in parts verified by {mode}, run {run + 1}: {moved['seconds']:.2f} s")
            measured[mode].append(moved["seconds"])
    for mode, runs_seconds in measured.items():
        seconds = statistics.median(runs_seconds)
        results[mode] = {"seconds": seconds, "runs": runs_seconds, "objects_per_second": objects / seconds,
                         "mib_per_second": objects * 24 / seconds}
    return results


# ---------------------------------------------------------------- large objects

LARGE_MOVERS = ("s3-transfer-flow", "s5cmd", "rclone")
# This project's mover with MULTIPART_THRESHOLD_BYTES at CopyObject's limit: each object
# up to 5 GiB copied whole, as s5cmd and rclone copy it.
WHOLE_COPIES = "s3-transfer-flow, whole copies up to 5 GiB"


def large_objects(s3, table, workdir, profile, lambdas, count, size_mib, runs):
    """`count` objects of `size_mib` MiB, above the multipart threshold at its default (256
    MiB, in 64 MiB parts), moved from large/raw/ to large/refined/ on `s3` by this
    project's mover (and once more with whole copies up to 5 GiB), s5cmd and rclone;
    median of `runs` runs each. The objects are uploaded once under large/seed/ and
    copied from there to large/raw/ (server-side, untimed) before each run, so every run
    moves the same objects."""
    source = os.path.join(workdir, f"large-{count}x{size_mib}")
    if not os.path.exists(source):
        os.makedirs(source + ".partial", exist_ok=True)
        for i in range(count):
            with open(os.path.join(source + ".partial", f"big-{i:03d}.csv"), "wb") as f:
                for _ in range(size_mib):
                    f.write(os.urandom(MIB))
        os.rename(source + ".partial", source)
    bench = Bench(s3, table, workdir, 0, 0, profile, lambdas)
    expected = {name: os.path.getsize(os.path.join(source, name)) for name in os.listdir(source)}
    bench.s5cmd("rm", f"s3://{BUCKET}/large/*")
    started = time.perf_counter()
    bench.s5cmd("cp", os.path.join(source, "*"), f"s3://{BUCKET}/large/seed/")
    log(f"large objects on {s3.version()}: seeded {count} × {size_mib} MiB in "
        f"{time.perf_counter() - started:.0f} s")

    def where():
        return ({k.rpartition("/")[2]: v for k, v in bench.sizes("large/raw/").items()},
                {k.rpartition("/")[2]: v for k, v in bench.sizes("large/refined/").items()})

    seeded_etags = None

    def reseed():
        """large/raw/ as seeded, large/refined/ empty; the same objects every run."""
        nonlocal seeded_etags
        bench.s5cmd("rm", f"s3://{BUCKET}/large/raw/*")
        bench.s5cmd("rm", f"s3://{BUCKET}/large/refined/*")
        bench.s5cmd("cp", f"s3://{BUCKET}/large/seed/*", f"s3://{BUCKET}/large/raw/")
        raw, refined = where()
        etags = bench.listing("large/raw/")
        seeded_etags = seeded_etags or etags
        if raw != expected or refined or etags != seeded_etags:
            raise RuntimeError("large objects: the data set changed between runs")

    results = {"server": s3.version(), "server_core": s3.core, "objects": count, "object_mib": size_mib,
               "movers": {}}
    movers = bench.movers(LARGE_MOVERS, "large/raw/", "large/refined/")
    ours, ours_env = movers["s3-transfer-flow"]
    movers[WHOLE_COPIES] = (lambda run: ours(f"whole-{run}"),
                            dict(ours_env, MULTIPART_THRESHOLD_BYTES=str(5 * 1024 * MIB)))
    for name, (command, env) in movers.items():
        measured = []
        for run in range(runs):
            reseed()
            before = s3.requests()
            server_before = process_cpu_seconds(s3.pid)
            begun = time.perf_counter()
            done = subprocess.run(pinned(MOVER_CPU, command(f"large-{run}")), env=env,
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - begun
            server_cpu = process_cpu_seconds(s3.pid) - server_before
            after = s3.requests()
            if done.returncode != 0:
                raise RuntimeError(f"large objects, {name} failed: {done.stderr[-1000:]}")
            raw, refined = where()
            if raw or refined != expected:
                raise RuntimeError(f"large objects, {name}: {len(raw)} left at the source, "
                                   f"{len(refined)} of {count} at the destination with their sizes")
            requests = ({k: after.get(k, 0) - before.get(k, 0) for k in after
                         if after.get(k, 0) != before.get(k, 0)} if before is not None else None)
            log(f"large objects on {s3.version()}, {name} run {run + 1}: {seconds:.2f} s, "
                f"{count * size_mib / seconds:.0f} MiB/s, server CPU {server_cpu:.2f} s"
                + (f", requests {requests}" if requests else ""))
            measured.append({"seconds": seconds, "requests": requests, "server_cpu_seconds": server_cpu})
        middle = median_run(measured)
        seconds = middle["seconds"]
        requests = middle["requests"]
        results["movers"][name] = {
            "seconds": seconds, "runs": [m["seconds"] for m in measured],
            "mib_per_second": count * size_mib / seconds,
            "requests_per_object": sum(requests.values()) / count if requests else None,
            "requests": requests,
            "server_busy": middle["server_cpu_seconds"] / middle["seconds"],
        }
    bench.s5cmd("rm", f"s3://{BUCKET}/large/*")
    return results


def large_lines(large):
    """The large objects' tables in results.md, one per server."""
    lines = []
    for result in large:
        shared = " (beside the movers and this project's status table)" if result["server_core"] == MOVER_CPU else ""
        lines += ["", f"Large objects on {result['server']}, on core {result['server_core']}{shared}: "
                      f"{result['objects']} objects of {result['object_mib']} MiB under large/raw/, copied "
                      f"there from large/seed/ before each run and moved to large/refined/; this project's "
                      f"multipart threshold and part size at their defaults (256 MiB, 64 MiB parts); "
                      f"median of {len(next(iter(result['movers'].values()))['runs'])} runs.", "",
                  "| mover | seconds (median) | MiB/s | S3 requests per object | S3 server busy |",
                  "|---|---|---|---|---|"]
        for name, m in result["movers"].items():
            per_object = f"{m['requests_per_object']:.1f}" if m["requests_per_object"] is not None else "-"
            # Under a second, the clock ticks /proc counts CPU in make the share meaningless.
            busy = f"{m['server_busy']:.0%}" if m["seconds"] >= 1 else "-"
            lines.append(f"| {name} | {m['seconds']:.2f} | {m['mib_per_second']:.0f} | {per_object} | {busy} |")
        counted = {name: m["requests"] for name, m in result["movers"].items() if m["requests"]}
        if counted:
            lines += ["", "S3 requests of the median run, by operation:", ""]
            for name, requests in counted.items():
                lines.append(f"- {name}: " + ", ".join(f"{op} {n}" for op, n in sorted(requests.items())))
    return lines


# ---------------------------------------------------------------- report

def machine():
    cpu = "unknown CPU"
    try:
        cpu = re.search(r"model name\s*:\s*(.+)", open("/proc/cpuinfo").read()).group(1)
    except (OSError, AttributeError):
        pass
    memory = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1)) // (1024 * 1024)
    return f"{cpu}, {os.cpu_count()} cores, {memory} GiB, {platform.system()} {platform.release()}"


def versions(s3, movers):
    def first_line(command):
        try:
            return subprocess.run(command, capture_output=True, text=True).stdout.splitlines()[0].strip()
        except (OSError, IndexError):
            return "?"
    found = {"S3 server": s3.version()}
    commands = {"s5cmd": ("s5cmd", "version"), "rclone": ("rclone", "version"),
                "aws s3 mv": ("aws", "--version")}
    for name in movers:
        if name in commands:
            program, argument = commands[name]
            found[name] = first_line([tool(program), argument])
    return found


def workflow_lines(w, bare_move, server):
    """The whole workflow's paragraph and tables in results.md; `bare_move` is this
    project's move without the state machine (`xtask bench-move`), in seconds."""
    t = w["timeline"]

    def shown(seconds):
        return "-" if seconds is None else f"{seconds:.2f}"
    lines = ["", f"Whole workflow on the local stack (state machine, local Lambda, moto for DynamoDB and "
                 f"Step Functions, the functions' S3 on {server}), waits 0: the execution took "
                 f"{w['execution_seconds']:.2f} s (`run-transfer`, start to exit: "
                 f"{w['run_transfer_seconds']:.2f} s), {w['execution_seconds'] / bare_move:.2f}× the bare "
                 f"move's {bare_move:.2f} s (target: at most 1.2×, {1.2 * bare_move:.2f} s).", "",
             "| the run, seconds from the execution's start | s |", "|---|---|",
             f"| input checked (master's check call, first states) | {shown(t['input_checked'])} |",
             f"| master hands out the first batch | {shown(t['first_batch_handed_out'])} |",
             f"| master hands out the last batch | {shown(t['last_batch_handed_out'])} |",
             f"| master's last call returns: listing done | {shown(t['listing_done'])} |",
             f"| the last file's outcome is recorded | {shown(t['last_outcome'])} |",
             f"| status completes the activity task | {shown(t['task_succeeded'])} |",
             f"| the execution ends | {shown(t['ended'])} |", "",
             f"CPU seconds during the execution, by process (the S3 server on core {SERVER_CPU}, "
             f"everything else on core {MOVER_CPU}):", "",
             "| process | CPU seconds |", "|---|---|"]
    for name, seconds in sorted(w["cpu_seconds"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {seconds:.2f} |")
    return lines


def report(results, out_dir, chart):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    movers = results["movers"]
    ours = movers.get("s3-transfer-flow")
    lines = [
        f"# Benchmark results, {results['date']}",
        "",
        f"Machine: {results['machine']}. S3 server: {results['versions']['S3 server']} on core "
        f"{results['server_core']}; each mover on core {MOVER_CPU}, with moto for this project's status table. "
        f"Data set: {results['objects']} objects ({results['files']} of 1 KiB, {results['large']} of "
        f"8 MiB) under raw/, moved to refined/; median of {results['runs']} runs, reseeded before each. "
        f"This project's mover: `xtask bench-move` with {results['lambdas']} slave invocations at once."
        + "".join(f" {k}: {v}." for k, v in results["versions"].items() if k != "S3 server"),
        "",
        "| mover | seconds (median) | objects/s | s3-transfer-flow's speed × | rate / bare copy's "
        "| S3 requests per object | S3 server busy | mover busy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    bare = movers.get(BARE_COPY)
    for name, m in movers.items():
        ratio = f"{ours['objects_per_second'] / m['objects_per_second']:.2f}" if ours else "-"
        floor = f"{m['objects_per_second'] / bare['objects_per_second']:.2f}" if bare else "-"
        per_object = f"{m['requests_per_object']:.3f}" if m["requests_per_object"] is not None else "-"
        lines.append(f"| {name} | {m['seconds']:.2f} | {m['objects_per_second']:.0f} | {ratio} | {floor} "
                     f"| {per_object} | {m['server_busy']:.0%} | {m['mover_busy']:.0%} |")
    if bare:
        lines += ["", f"The bare copy copies every object (one `CopyObject` each) and deletes nothing: it is the "
                      f"least a server-side move can ask of the server. \"S3 server busy\" is the server's CPU "
                      f"time over the run's duration (100% is its whole core); \"mover busy\" is the mover's own "
                      f"(without this project's status table on moto), on core {MOVER_CPU}."]
    counted = {name: m["requests"] for name, m in movers.items() if m["requests"]}
    if counted:
        lines += ["", "S3 requests of the median run, by operation:", ""]
        for name, requests in counted.items():
            lines.append(f"- {name}: " + ", ".join(f"{op} {n}" for op, n in sorted(requests.items())))
    if results.get("functions"):
        lines += ["", "| function | cold start (median of 5) | peak memory |", "|---|---|---|"]
        for name, p in results["functions"].items():
            peak = "-"
            if "peak_mb" in p:
                what = f"{p['batch_files']}-file batch" if "batch_files" in p else "listing 1,000 files"
                peak = f"{p['peak_mb']:.1f} MB ({what})"
            lines.append(f"| {name} | {p['cold_start_ms']:.1f} ms | {peak} |")
    if results.get("verification"):
        v = results["verification"]
        lines += ["", f"Copies in parts, verified by the source's checksum or by size and ETag: "
                      f"{v['objects']} objects of {v['object_mib']} MiB in {v['part_mib']} MiB parts on "
                      f"{v['server']} (which copies bytes; on core {MOVER_CPU} with the mover and the "
                      f"status table), moved by this project's mover, the two ways in turn; median of "
                      f"{len(v['checksum']['runs'])} runs, each timed by the mover from its first listing "
                      f"to its last outcome.", "",
                  "| verified by | seconds (median) | objects/s | MiB/s |", "|---|---|---|---|"]
        for mode, label in (("checksum", "the source's CRC32 (full object)"), ("etag", "size and ETag")):
            m = v[mode]
            lines.append(f"| {label} | {m['seconds']:.2f} | {m['objects_per_second']:.2f} | "
                         f"{m['mib_per_second']:.1f} |")
    if results.get("large_objects"):
        lines += large_lines(results["large_objects"])
    if results.get("workflow") and ours:
        lines += workflow_lines(results["workflow"], ours["seconds"], results["versions"]["S3 server"])
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if chart:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        names = list(movers)[::-1]
        figure, (speed, requests) = plt.subplots(1, 2, figsize=(10, 3.2))
        speed.barh(names, [movers[n]["objects_per_second"] for n in names], color="#3b7dd8")
        speed.set_xlabel("objects per second (higher is better)")
        requests.barh(names, [movers[n]["requests_per_object"] or 0 for n in names], color="#d8823b")
        requests.set_xlabel("S3 requests per object (lower is better)")
        requests.set_yticks([])
        figure.suptitle(f"Moving {results['objects']:,} objects on {results['versions']['S3 server']}, "
                        f"{results['date']}")
        figure.tight_layout()
        figure.savefig(os.path.join(out_dir, "chart.png"), dpi=120)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--movers", default=",".join(MOVERS))
    parser.add_argument("--lambdas", type=int, default=8, help="slave invocations at once")
    parser.add_argument("--profile", default="release", choices=["release", "debug"])
    parser.add_argument("--no-functions", action="store_true")
    parser.add_argument("--no-workflow", action="store_true")
    parser.add_argument("--no-verification", action="store_true")
    parser.add_argument("--no-large", action="store_true")
    parser.add_argument("--large-objects", type=int, default=4, help="objects of the large data set")
    parser.add_argument("--large-mib", type=int, default=1024, help="MiB per large object")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    movers = args.movers.split(",")
    if args.smoke:
        args.files, args.large, args.runs = 200, 0, 1
        movers, args.no_functions, args.no_workflow = ["s3-transfer-flow", "s5cmd"], True, True
        args.no_large = True
    if args.large_objects < 1 or args.large_mib < 1:
        parser.error("--large-objects and --large-mib must be at least 1")
    unknown = set(movers) - set(MOVERS)
    if unknown:
        parser.error(f"unknown movers {sorted(unknown)}; known: {', '.join(MOVERS)}")
    workdir = os.path.join(TOOLS, "bench-smoke" if args.smoke else "bench-work")
    os.makedirs(workdir, exist_ok=True)
    processes = Processes()
    try:
        table = Moto(processes, workdir, MOVER_CPU)
        if args.smoke:
            s3 = table
            s3.create_bucket()
        else:
            s3 = Garage(processes, workdir)
        bench = Bench(s3, table, workdir, args.files, args.large, args.profile, args.lambdas)
        results = {
            "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(s3, movers),
            "files": args.files, "large": args.large, "objects": bench.objects, "runs": args.runs,
            "lambdas": args.lambdas, "server_core": s3.core,
            "movers": {name: bench.median_of(name, command, env, args.runs)
                       for name, (command, env) in bench.movers(movers).items()},
        }
        results["functions"] = None if args.no_functions else functions_profile(bench, workdir, 5)
        results["workflow"] = None if args.no_workflow else whole_workflow(bench, workdir)
        if not args.smoke and not (args.no_large and args.no_verification):
            table.create_bucket()  # moto's S3 copies bytes, where Garage copies by reference
        if not args.no_large:
            results["large_objects"] = [large_objects(server, table, workdir, args.profile, args.lambdas,
                                                      args.large_objects, args.large_mib, args.runs)
                                        for server in (s3, table)]
        if not args.no_verification:
            results["verification"] = verification(bench, table, workdir, 2 if args.smoke else 6,
                                                   1 if args.smoke else args.runs)
    finally:
        processes.stop()
    report(results, workdir if args.smoke else os.path.join(ROOT, "bench", "results"), chart=not args.smoke)
    ours = results["movers"].get("s3-transfer-flow")
    for name, m in results["movers"].items():
        if ours and name != "s3-transfer-flow":
            log(f"s3-transfer-flow moves {ours['objects_per_second'] / m['objects_per_second']:.2f}× as many "
                f"objects per second as {name}")


if __name__ == "__main__":
    main()
