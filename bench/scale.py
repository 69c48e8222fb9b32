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
import subprocess
import time

from bench.run import BUCKET, ROOT, TOOLS, Garage, Processes, data_set, log, machine, tool
from bench.stack import FUNCTIONS, VENV_PYTHON, BenchStack, timeline

SIZES = (10_000, 100_000, 1_000_000)
# Lambda's longest timeout, which the template gives master.
MASTER_TIMEOUT_SECONDS = 900


def count_objects(garage, env, prefix):
    done = subprocess.run([tool("s5cmd"), "--endpoint-url", garage.endpoint, "ls",
                           f"s3://{BUCKET}/{prefix}*"], env=env, capture_output=True, text=True)
    if done.returncode != 0 and "no object found" not in done.stderr:
        raise RuntimeError(f"s5cmd ls {prefix}: {done.stderr[-500:]}")
    return sum(1 for line in done.stdout.splitlines() if line.strip())


def seed(garage, env, workdir, files):
    source = data_set(workdir, files, 0)
    prefix = f"n{files}/raw/"
    # The run's check counts what arrives: nothing may be there before it.
    if count_objects(garage, env, f"n{files}/refined/"):
        raise RuntimeError(f"n{files}/refined/ is not empty before the run")
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


def calls_summary(calls, files):
    """The functions' DynamoDB requests per file, by function, from the calls the front
    recorded."""
    by_function = {}
    for call in calls:
        caller = call.get("caller")
        if call.get("service") == "dynamodb" and caller in FUNCTIONS:
            by_function[caller] = by_function.get(caller, 0) + call["count"]
    return {
        "dynamodb_requests_per_file": sum(by_function.values()) / files,
        "dynamodb_requests_by_function": by_function,
    }


def run_size(garage, workdir, files, profile, master_seconds):
    """One execution moving `files` objects on a fresh local stack."""
    processes = Processes()
    margin_ms = (MASTER_TIMEOUT_SECONDS - master_seconds) * 1000
    try:
        stack = BenchStack(processes, os.path.join(workdir, f"stack-{files}"), garage, profile,
                           f"scale{files}", function_env=[f"DEADLINE_MARGIN_MS={margin_ms}"])
        log(f"{files} files: running the workflow ...")
        arn, wall = stack.run(f"scale-{files}", {
            "source_prefix": f"n{files}/raw/", "destination_prefix": f"n{files}/refined/",
            "wait_before_master_seconds": 0, "wait_before_status_seconds": 0})
        memory = stack.peak_memory_mb()
        probe = stack.probe(arn, stack.env["TABLE_NAME"])
        calls = stack.calls()
    finally:
        processes.stop()
    s3_env = dict(os.environ, **garage.credentials())
    moved = count_objects(garage, s3_env, f"n{files}/refined/")
    left = count_objects(garage, s3_env, f"n{files}/raw/")
    if probe["status"] != "SUCCEEDED" or moved != files or left:
        raise RuntimeError(f"{files} files: execution {probe['status']}, {moved} moved, {left} left")
    times = timeline(probe, calls)
    result = {
        "files": files,
        **probe,
        "run_transfer_seconds": wall,
        "files_per_second": files / probe["execution_seconds"],
        "peak_mb": memory,
        "timeline": times,
        "last_outcome_to_task_success_seconds": (times["task_succeeded"] - times["last_outcome"]
                                                 if times["task_succeeded"] is not None
                                                 and times["last_outcome"] is not None else None),
        **calls_summary(calls, files),
    }
    log(f"{files} files: {result['execution_seconds']:.1f} s, {result['files_per_second']:.0f} files/s, "
        f"{probe['master_calls']} master calls, {probe['history_events']} history events, "
        f"peak MB {memory}, {probe['table_items']} items / {probe['table_bytes'] / 1e6:.1f} MB, "
        f"{result['dynamodb_requests_per_file']:.3f} DynamoDB requests/file")
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
