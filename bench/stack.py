"""The local stack as the benchmarks run it: the whole workflow (moto for DynamoDB and
Step Functions, the front, local Lambda running the built binaries) on the movers' core,
with the functions' S3 on the benchmark's server, and what a run through it cost.

Used by `make bench` (bench/run.py, the whole workflow beside the bare move) and by
`make bench-scale` (bench/scale.py, the workflow at growing sizes).
"""

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request

from bench.run import BUCKET, MOVER_CPU, TARGET, TOOLS, binary, pinned, process_cpu_seconds
from local.stack import free_port

FUNCTIONS = ("master", "slave", "status")
VENV_PYTHON = os.path.join(TOOLS, "venv", "bin", "python")

# Reads what the execution and the status table say, with boto3 from the local stack's
# environment: prints one JSON object. `phases` are seconds from the execution's start.
PROBE_SCRIPT = """
import json, sys
import boto3
arn, table = sys.argv[1:3]
sfn, dynamodb = boto3.client("stepfunctions"), boto3.client("dynamodb")
described = sfn.describe_execution(executionArn=arn)
events = []
for page in sfn.get_paginator("get_execution_history").paginate(executionArn=arn):
    events += page["events"]
def scheduled(event):
    details = event.get("lambdaFunctionScheduledEventDetails") or {}
    return details.get("resource", "")
def state(event):
    details = event.get("stateEnteredEventDetails") or event.get("stateExitedEventDetails") or {}
    return details.get("name")
start = events[0]["timestamp"]
def last(kind, name=None):
    times = [(e["timestamp"] - start).total_seconds() for e in events
             if e["type"] == kind and (name is None or state(e) == name)]
    return max(times) if times else None
master_calls = sum(1 for e in events if scheduled(e).endswith(":master"))
def value_size(value):
    (kind, v), = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        digits = v.lstrip("-").replace(".", "").strip("0") or "0"
        return (len(digits) + 1) // 2 + 1
    if kind == "B":
        return len(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in v)
    if kind == "M":
        return 3 + sum(len(k.encode()) + value_size(w) + 1 for k, w in v.items())
    if kind == "L":
        return 3 + sum(value_size(w) + 1 for w in v)
    return len(json.dumps(v))
items = size = 0
if table:
    for page in dynamodb.get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            items += 1
            size += sum(len(k.encode()) + value_size(v) for k, v in item.items())
print(json.dumps({
    "status": described["status"],
    "started_at": start.timestamp(),
    "execution_seconds": (described["stopDate"] - described["startDate"]).total_seconds(),
    "phases": {
        "input_checked": last("TaskStateExited", "CheckInput"),
        "listing_done": last("TaskStateExited", "Master"),
        "task_succeeded": last("ActivitySucceeded"),
    },
    "history_events": len(events),
    "master_calls": master_calls,
    "table_items": items,
    "table_bytes": size,
}))
"""


class BenchStack:
    """A fresh local stack in `state`, its functions' S3 on `s3` (Garage or moto), with
    the front recording the functions' calls. Stopped with the benchmark's processes."""

    def __init__(self, processes, state, s3, profile, name, function_env=()):
        self.profile = profile
        shutil.rmtree(state, ignore_errors=True)
        os.makedirs(state)
        faults = os.path.join(state, "faults.json")
        with open(faults, "w") as f:
            json.dump({"record_calls": True}, f)
        options = ["--function-env", f"AWS_ENDPOINT_URL_S3={s3.endpoint}"]
        for pair in [*(f"{k}={v}" for k, v in s3.credentials().items()), *function_env]:
            options += ["--function-env", pair]
        log_file = os.path.join(state, "stack.log")
        self.process = processes.start(
            pinned(MOVER_CPU, [VENV_PYTHON, "-m", "local.stack", "run", state,
                               "--port", str(free_port()), "--lambda-port", str(free_port()),
                               "--bucket", BUCKET,
                               "--stack", name, "--no-build",
                               "--bin-dir", os.path.join(TARGET, profile), "--faults", faults,
                               *options]),
            log_file)
        deadline = time.monotonic() + 300
        while not os.path.exists(os.path.join(state, "ready")):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the local stack did not start: {open(log_file).read()[-2000:]}")
            time.sleep(0.2)
        self.env = dict(os.environ)
        for line in open(os.path.join(state, "env")):
            if line.startswith("export "):
                key, _, value = line[len("export "):].strip().partition("=")
                self.env[key] = value.strip("'")
        self.env.pop("AWS_CA_BUNDLE", None)

    def run(self, name, run_input):
        """One execution through `run-transfer`, on the movers' core: its ARN and the
        seconds `run-transfer` took, start to exit."""
        started = time.perf_counter()
        done = subprocess.run(pinned(MOVER_CPU, [binary(self.profile, "run-transfer"), "--name", name,
                                                 "--input", json.dumps(run_input)]),
                              env=self.env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"run-transfer: {done.stdout[-1500:]} {done.stderr[-1500:]}")
        return re.search(r"execution (\S+)", done.stdout).group(1), wall

    def probe(self, arn, table=None):
        """What the execution's history and the status table (when named) say."""
        done = subprocess.run([VENV_PYTHON, "-c", PROBE_SCRIPT, arn, table or ""],
                              env=self.env, capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    def calls(self):
        """The calls the front recorded: caller, service, operation, count, first_at and
        last_at (time.time())."""
        return json.loads(urllib.request.urlopen(f"{self.env['AWS_ENDPOINT_URL']}/_local/calls").read())

    def processes(self):
        """The stack's processes: pid -> what it is (a function's name, "moto" or "front
        and local Lambda")."""
        binaries = {os.path.realpath(binary(self.profile, name)): name for name in FUNCTIONS}
        found = {self.process.pid: "front and local Lambda"}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                status = open(f"/proc/{pid}/status").read()
                parent = int(re.search(r"PPid:\s+(\d+)", status).group(1))
                if parent != self.process.pid:
                    continue
                name = binaries.get(os.path.realpath(f"/proc/{pid}/exe"))
                if name is None and "local.moto_server" in open(f"/proc/{pid}/cmdline").read():
                    name = "moto"
            except (OSError, AttributeError):
                continue
            if name:
                found[int(pid)] = name
        return found

    def cpu_seconds(self):
        """CPU seconds used so far by the stack's processes, summed by what they are."""
        used = {}
        for pid, name in self.processes().items():
            seconds = process_cpu_seconds(pid)
            if seconds is not None:
                used[name] = used.get(name, 0.0) + seconds
        return used

    def peak_memory_mb(self):
        """The largest peak resident memory (VmHWM) among the running instances of each
        function, in MB."""
        peaks = {}
        for pid, name in self.processes().items():
            if name not in FUNCTIONS:
                continue
            try:
                match = re.search(r"VmHWM:\s+(\d+) kB", open(f"/proc/{pid}/status").read())
            except OSError:
                continue
            if match:
                peaks[name] = max(peaks.get(name, 0.0), int(match.group(1)) / 1024)
        missing = set(FUNCTIONS) - set(peaks)
        if missing:
            raise RuntimeError(f"no running instance of {sorted(missing)} under the local stack")
        return peaks


def timeline(probe, calls):
    """When each part of a run happened, in seconds from the execution's start: the input
    check, master's first and last handing out of a batch, the last file's outcome,
    master's last call returning, status completing the activity task, the end."""
    start = probe["started_at"]

    def at(caller, service, operation, first=False):
        times = [c["first_at" if first else "last_at"] for c in calls
                 if (c.get("caller"), c.get("service"), c.get("operation")) == (caller, service, operation)]
        if not times:
            return None
        return (min(times) if first else max(times)) - start

    return {
        "input_checked": probe["phases"]["input_checked"],
        "first_batch_handed_out": at("master", "lambda", "Invoke", first=True),
        "last_batch_handed_out": at("master", "lambda", "Invoke"),
        "listing_done": probe["phases"]["listing_done"],
        "last_outcome": at("slave", "dynamodb", "TransactWriteItems"),
        "task_succeeded": probe["phases"]["task_succeeded"],
        "ended": probe["execution_seconds"],
    }
