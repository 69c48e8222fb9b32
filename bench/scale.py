"""How the whole workflow holds up as a run grows: `make bench-scale` (not in CI).

Usage: python -m bench.scale [--sizes 10000,100000,1000000] [--master-seconds 20]
                             [--profile release]

Garage (on core 0) holds the objects: N objects of 1 KiB are seeded under n<N>/raw/ for
each size. For each size a fresh local stack (on core 1: moto for DynamoDB and Step
Functions, the front, local Lambda running the release binaries, with the functions' S3
on Garage) runs one execution that moves n<N>/raw/ to n<N>/refined/, the configured
waits at 0. Master's deadline margin is set so that each master call stops after about
--master-seconds, as a call stops near its 15-minute timeout on AWS: the listing of a
million files then takes several calls.

For each size it reports files per second (the execution's own duration), master's,
slave's and status's peak memory (the largest VmHWM among each function's instances),
the status table's items and bytes (sized by DynamoDB's item size rules), the functions'
DynamoDB requests per file, the execution's history events and master calls, and the
time from the last file's outcome to status completing the activity task. It checks
that every object arrived and none is left. Results go to bench/results/scale.md,
scale.json and scale.png, with the machine's description.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request

from bench.run import (BUCKET, MOVER_CPU, ROOT, TARGET, TOOLS, Garage, Processes, binary,
                       data_set, log, machine, pinned, tool)
from local.stack import free_port

SIZES = (10_000, 100_000, 1_000_000)
FUNCTIONS = ("master", "slave", "status")
# Lambda's longest timeout, which the template gives master.
MASTER_TIMEOUT_SECONDS = 900
VENV_PYTHON = os.path.join(TOOLS, "venv", "bin", "python")

# Reads what the execution and the status table say, with boto3 from the local stack's
# environment: prints one JSON object.
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
for page in dynamodb.get_paginator("scan").paginate(TableName=table):
    for item in page["Items"]:
        items += 1
        size += sum(len(k.encode()) + value_size(v) for k, v in item.items())
print(json.dumps({
    "status": described["status"],
    "execution_seconds": (described["stopDate"] - described["startDate"]).total_seconds(),
    "history_events": len(events),
    "master_calls": master_calls,
    "table_items": items,
    "table_bytes": size,
}))
"""


def count_objects(garage, env, prefix):
    done = subprocess.run([tool("s5cmd"), "--endpoint-url", garage.endpoint, "ls",
                           f"s3://{BUCKET}/{prefix}*"], env=env, capture_output=True, text=True)
    if done.returncode != 0 and "no object found" not in done.stderr:
        raise RuntimeError(f"s5cmd ls {prefix}: {done.stderr[-500:]}")
    return sum(1 for line in done.stdout.splitlines() if line.strip())


def seed(garage, env, workdir, files):
    source = data_set(workdir, files, 0)
    prefix = f"n{files}/raw/"
    if count_objects(garage, env, prefix) == files:
        return
    started = time.perf_counter()
    done = subprocess.run([tool("s5cmd"), "--endpoint-url", garage.endpoint, "cp",
                           os.path.join(source, "*"), f"s3://{BUCKET}/{prefix}"],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"seeding {files} objects: {done.stderr[-1000:]}")
    seeded = count_objects(garage, env, prefix)
    if seeded != files:
        raise RuntimeError(f"seeded {seeded} objects, not {files}")
    log(f"seeded {files} objects in {time.perf_counter() - started:.0f} s")


def peak_memory_mb(profile, stack_pid):
    """The largest peak resident memory (VmHWM) among the instances of each function
    that this stack's local Lambda (process `stack_pid`) keeps warm, in MB."""
    binaries = {os.path.realpath(binary(profile, name)): name for name in FUNCTIONS}
    peaks = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            name = binaries.get(os.path.realpath(f"/proc/{pid}/exe"))
            if name is None:
                continue
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            continue
        parent = re.search(r"PPid:\s+(\d+)", status)
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        if match and parent and int(parent.group(1)) == stack_pid:
            peaks[name] = max(peaks.get(name, 0.0), int(match.group(1)) / 1024)
    missing = set(FUNCTIONS) - set(peaks)
    if missing:
        raise RuntimeError(f"no running instance of {sorted(missing)} under the local stack")
    return peaks


def calls_summary(front, files):
    """The functions' DynamoDB requests per file, by function, and the seconds from the
    last outcome a slave recorded to status completing the activity task."""
    calls = json.loads(urllib.request.urlopen(f"{front}/_local/calls").read())
    by_function = {}
    last_outcome = completed = None
    for call in calls:
        caller = call.get("caller")
        if call.get("service") == "dynamodb" and caller in FUNCTIONS:
            by_function[caller] = by_function.get(caller, 0) + call["count"]
        if (caller, call.get("service"), call.get("operation")) == ("slave", "dynamodb", "TransactWriteItems"):
            last_outcome = max(last_outcome or 0, call["last_at"])
        if (caller, call.get("service"), call.get("operation")) == ("status", "states", "SendTaskSuccess"):
            completed = max(completed or 0, call["last_at"])
    return {
        "dynamodb_requests_per_file": sum(by_function.values()) / files,
        "dynamodb_requests_by_function": by_function,
        "last_outcome_to_task_success_seconds": (completed - last_outcome
                                                 if completed and last_outcome else None),
    }


def run_size(garage, workdir, files, profile, master_seconds):
    """One execution moving `files` objects on a fresh local stack."""
    processes = Processes()
    state = os.path.join(workdir, f"stack-{files}")
    shutil.rmtree(state, ignore_errors=True)
    os.makedirs(state)
    faults = os.path.join(state, "faults.json")
    with open(faults, "w") as f:
        json.dump({"record_calls": True}, f)
    margin_ms = (MASTER_TIMEOUT_SECONDS - master_seconds) * 1000
    options = ["--function-env", f"AWS_ENDPOINT_URL_S3={garage.endpoint}",
               "--function-env", f"DEADLINE_MARGIN_MS={margin_ms}"]
    for name, value in garage.credentials().items():
        options += ["--function-env", f"{name}={value}"]
    try:
        stack = processes.start(
            pinned(MOVER_CPU, [VENV_PYTHON, "-m", "local.stack", "run", state,
                               "--port", str(free_port()), "--lambda-port", str(free_port()),
                               "--bucket", BUCKET, "--stack", f"scale{files}", "--no-build",
                               "--bin-dir", os.path.join(TARGET, profile), "--faults", faults,
                               *options]),
            os.path.join(state, "stack.log"))
        deadline = time.monotonic() + 300
        while not os.path.exists(os.path.join(state, "ready")):
            if stack.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the local stack did not start: "
                                   f"{open(os.path.join(state, 'stack.log')).read()[-2000:]}")
            time.sleep(0.2)
        env = dict(os.environ)
        for line in open(os.path.join(state, "env")):
            if line.startswith("export "):
                name, _, value = line[len("export "):].strip().partition("=")
                env[name] = value.strip("'")
        env.pop("AWS_CA_BUNDLE", None)
        run_input = json.dumps({"source_prefix": f"n{files}/raw/",
                                "destination_prefix": f"n{files}/refined/",
                                "wait_before_master_seconds": 0, "wait_before_status_seconds": 0})
        log(f"{files} files: running the workflow ...")
        started = time.perf_counter()
        done = subprocess.run(pinned(MOVER_CPU, [binary(profile, "run-transfer"), "--name", f"scale-{files}",
                                                 "--input", run_input]),
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"run-transfer: {done.stdout[-1500:]} {done.stderr[-1500:]}")
        memory = peak_memory_mb(profile, stack.pid)
        arn = re.search(r"execution (\S+)", done.stdout).group(1)
        probe = json.loads(subprocess.run([VENV_PYTHON, "-c", PROBE_SCRIPT, arn, env["TABLE_NAME"]],
                                          env=env, capture_output=True, text=True, check=True).stdout)
        calls = calls_summary(env["AWS_ENDPOINT_URL"], files)
    finally:
        processes.stop()
    s3_env = dict(os.environ, **garage.credentials())
    moved = count_objects(garage, s3_env, f"n{files}/refined/")
    left = count_objects(garage, s3_env, f"n{files}/raw/")
    if probe["status"] != "SUCCEEDED" or moved != files or left:
        raise RuntimeError(f"{files} files: execution {probe['status']}, {moved} moved, {left} left")
    result = {
        "files": files,
        **probe,
        "run_transfer_seconds": wall,
        "files_per_second": files / probe["execution_seconds"],
        "peak_mb": memory,
        **calls,
    }
    log(f"{files} files: {result['execution_seconds']:.1f} s, {result['files_per_second']:.0f} files/s, "
        f"{probe['master_calls']} master calls, {probe['history_events']} history events, "
        f"peak MB {memory}, {probe['table_items']} items / {probe['table_bytes'] / 1e6:.1f} MB, "
        f"{calls['dynamodb_requests_per_file']:.3f} DynamoDB requests/file")
    return result


def report(results, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "scale.json"), "w") as f:
        json.dump(results, f, indent=2)
    runs = results["runs"]
    first = runs[0]
    lines = [
        f"# The whole workflow at scale ({results['date']})", "",
        f"Machine: {results['machine']}. {results['garage']} on core 0; the local stack "
        f"(moto {results['moto']} for DynamoDB and Step Functions, local Lambda, release builds) on "
        f"core 1. Objects of 1 KiB; each master call stops after about {results['master_seconds']} s. "
        f"Produced by `make bench-scale`.", "",
        "| files | seconds | files/s | vs the smallest | master calls | history events "
        "| master MB | slave MB | status MB | table items | table MB | DynamoDB requests/file "
        "| last outcome to task success (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        peaks = r["peak_mb"]
        lag = r["last_outcome_to_task_success_seconds"]
        lines.append(
            f"| {r['files']:,} | {r['execution_seconds']:.1f} | {r['files_per_second']:,.0f} "
            f"| {r['files_per_second'] / first['files_per_second']:.2f} | {r['master_calls']} "
            f"| {r['history_events']:,} | {peaks.get('master', 0):.1f} | {peaks.get('slave', 0):.1f} "
            f"| {peaks.get('status', 0):.1f} | {r['table_items']:,} | {r['table_bytes'] / 1e6:.1f} "
            f"| {r['dynamodb_requests_per_file']:.3f} | {'' if lag is None else f'{lag:.1f}'} |")
    with open(os.path.join(out_dir, "scale.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = [r["files"] for r in runs]
    fig, (rate, memory) = plt.subplots(1, 2, figsize=(10, 4))
    rate.plot(sizes, [r["files_per_second"] for r in runs], marker="o")
    rate.set_xscale("log")
    rate.set_ylim(bottom=0)
    rate.set_xlabel("files in the run")
    rate.set_ylabel("files per second")
    rate.set_title("whole workflow, local stack")
    for name in FUNCTIONS:
        memory.plot(sizes, [r["peak_mb"].get(name, 0) for r in runs], marker="o", label=name)
    memory.set_xscale("log")
    memory.set_ylim(bottom=0)
    memory.set_xlabel("files in the run")
    memory.set_ylabel("peak memory (MB)")
    memory.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "scale.png"), dpi=100)
    log(f"results in {out_dir}/scale.md")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--master-seconds", type=int, default=20)
    parser.add_argument("--profile", default="release", choices=["release", "debug"])
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    workdir = os.path.join(TOOLS, "bench-scale")
    os.makedirs(workdir, exist_ok=True)
    processes = Processes()
    try:
        garage = Garage(processes, workdir)
        env = dict(os.environ, **garage.credentials())
        env.pop("AWS_ENDPOINT_URL", None)
        moto = subprocess.run([VENV_PYTHON, "-c", "import moto; print(moto.__version__)"],
                              capture_output=True, text=True).stdout.strip()
        results = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "garage": garage.version(),
                   "moto": moto, "master_seconds": args.master_seconds, "runs": []}
        for files in sizes:
            seed(garage, env, workdir, files)
            results["runs"].append(run_size(garage, workdir, files, args.profile, args.master_seconds))
    finally:
        processes.stop()
    report(results, args.out)


if __name__ == "__main__":
    main()
