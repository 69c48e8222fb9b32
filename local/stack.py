"""The local stack: the whole workflow on one machine, with no AWS account.

Usage: python -m local.stack up DIR     start it in the background; return once it is up
       python -m local.stack down DIR   stop what `up` started
       python -m local.stack run DIR [--port 4566] [--lambda-port 9000] [--bucket NAME]
                                     [--stack NAME] [--exit-with-parent] [--faults FILE]
                                     [--release] [--no-build] [--bin-dir DIR]
                                     [--concurrency 16] [--function-env K=V]...
                                     [--parameter NAME=VALUE]...
                                        run it in the foreground

Starts, and stops together when this process ends:
  * moto's server (local/moto_server.py) for S3, DynamoDB and Step Functions;
  * local Lambda (local/lambdas.py), which runs the master, slave and status binaries
    as Lambda does: one invocation at a time per instance, a new instance (a cold start)
    when none is idle, up to --concurrency per function, with the template's timeouts;
  * a front on --port, the one endpoint the functions, the state machine's engine and
    users talk to, and on [::1]:--lambda-port, where `cargo lambda invoke` calls. It
    sends Lambda invocations to local Lambda and everything else to moto, and answers
    as AWS does where the workflow depends on it: an `Event` invocation answers 202 at
    once and runs in the background (retried twice on error, as AWS does), and a
    function error answers 200 with `X-Amz-Function-Error` and the error body, so the
    state machine's Retry and Catch see the function's `errorType`. It refuses payloads
    over Lambda's limits (1 MB asynchronous, 6 MB synchronous), as moto's server behind
    it refuses what AWS refuses (local/strict.py). It can also inject faults into the
    functions' own AWS calls and record them (local/faults.py).
It builds the binaries (`cargo build`; --no-build takes them from --bin-dir as they
are), deploys onto the stack what template.yaml deploys (`xtask local-deploy`), and
writes DIR/env with the endpoint, credentials, names and ARNs, and DIR/ready when it is
up. Logs go to DIR/*.log.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import faults, lambdas

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INVOKE = re.compile(r"^/2015-03-31/functions/(?P<function>[^/]+)/invocations(\?.*)?$")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
# `cargo lambda invoke` calls localhost, which resolves to ::1 first.
LAMBDA_HOST = "::1"
FUNCTIONS = ("master", "slave", "status")
# The front's own response writer sets these.
OWN_HEADERS = {"server", "date", "content-length"}
# AWS retries a failed async invocation twice; here after seconds, not minutes.
ASYNC_RETRY_DELAYS = (1, 2)
# Lambda's payload limits: 1 MB for an asynchronous invocation (since 2025-10, 256 KB
# before), 6 MB for a synchronous one.
MAX_PAYLOAD_BYTES = {"Event": 1024 * 1024, "RequestResponse": 6 * 1024 * 1024}
# The local AWS server's strict layer (strict.py) and the front's own limits are on
# unless LOCAL_AWS_STRICT=0.
STRICT = os.environ.get("LOCAL_AWS_STRICT", "1") != "0"


def log(message):
    print(f"[stack] {message}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, seconds, process=None, host="127.0.0.1"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {seconds} s")


def function_name(raw):
    """The function name in an Invoke path: a name, or a (URL-encoded) ARN."""
    name = urllib.parse.unquote(raw)
    if name.startswith("arn:"):
        name = name.split(":")[6]
    return name


class Front(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    moto_port = None
    lambdas = None
    background = None
    injector = faults.Faults()

    def log_message(self, *args):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def respond(self, status, headers, body, head=False):
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP and name.lower() not in OWN_HEADERS:
                self.send_header(name, value)
        length = dict((k.lower(), v) for k, v in headers).get("content-length")
        self.send_header("Content-Length", length if head and length else str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def forward(self, port, method, path, headers, body, host="127.0.0.1"):
        connection = http.client.HTTPConnection(host, port, timeout=900)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def handle_any(self):
        body = self.read_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if "Transfer-Encoding" in self.headers:
            headers["Content-Length"] = str(len(body))
        if self.path.startswith("/_local/"):
            return self.control(body)
        call = faults.classify(self.command, self.path, self.headers, body)
        answer = None
        if call is not None:
            latency, answer = self.injector.decide(call)
            time.sleep(latency)
            if answer == "drop":
                self.close_connection = True
                return
            if answer in faults.ANSWERS:
                # As S3 does, an error answered to a HEAD has no body, so no error code.
                return self.respond(*faults.error_answer(answer, call),
                                    head=self.command == "HEAD")
            if answer in ("tamper", "tamper-size") and call.operation == "CopyObject":
                tampered = faults.tamper_copy(
                    lambda *request: self.forward(self.moto_port, *request),
                    call, headers, grow=answer == "tamper-size",
                )
                if tampered is not None:
                    return self.respond(*tampered)
            if answer == "tamper" and call.operation == "UploadPartCopy":
                tampered = faults.tamper_part_copy(
                    lambda *request: self.forward(self.moto_port, *request),
                    call, self.path, headers,
                )
                if tampered is not None:
                    return self.respond(*tampered)
        match = INVOKE.match(self.path)
        if self.command == "POST" and match:
            return self.invoke(function_name(match.group("function")), body)
        status, response_headers, response_body = self.forward(
            self.moto_port, self.command, self.path, headers, body
        )
        if answer == "drop-after":
            self.close_connection = True
            return
        self.respond(status, response_headers, response_body, head=self.command == "HEAD")

    def control(self, body):
        """`PUT /_local/faults` sets the faults, `GET /_local/faults` counts those injected,
        `GET /_local/calls` lists the calls recorded."""
        json_type = [("Content-Type", "application/json")]
        if self.command == "PUT" and self.path == "/_local/faults":
            try:
                self.injector.configure(json.loads(body or b"{}"))
            except ValueError as error:
                return self.respond(400, json_type, json.dumps({"error": str(error)}).encode())
            return self.respond(200, json_type, b"{}")
        if self.command == "GET" and self.path == "/_local/faults":
            return self.respond(200, json_type, json.dumps(self.injector.report()).encode())
        if self.command == "GET" and self.path == "/_local/calls":
            return self.respond(200, json_type, json.dumps(self.injector.recorded()).encode())
        self.respond(404, json_type, b'{"error": "unknown control path"}')

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = handle_any

    def invoke(self, name, body):
        function = self.lambdas.function(name)
        if function is None:
            message = f"Function not found: arn:aws:lambda:{lambdas.REGION}:{lambdas.ACCOUNT}:function:{name}"
            return self.respond(404, [("X-Amzn-ErrorType", "ResourceNotFoundException"),
                                      ("Content-Type", "application/json")],
                                json.dumps({"Type": "User", "Message": message}).encode())
        kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if kind == "DryRun":
            return self.respond(204, [], b"")
        limit = MAX_PAYLOAD_BYTES.get(kind, MAX_PAYLOAD_BYTES["RequestResponse"])
        if STRICT and len(body) > limit:
            message = (f"{len(body)} byte payload is too large for the {kind} invocation "
                       f"type (limit {limit} bytes)")
            return self.respond(413, [("X-Amzn-ErrorType", "RequestEntityTooLargeException"),
                                      ("Content-Type", "application/json")],
                                json.dumps({"Type": "User", "message": message}).encode())
        if kind == "Event":
            for _ in range(2 if self.injector.duplicates(name) else 1):
                self.background.submit(self.run_async, function, body)
            return self.respond(202, [("Content-Type", "application/json")], b"")
        ok, response = function.invoke(body)
        headers = [("Content-Type", "application/json"), ("X-Amz-Executed-Version", "$LATEST")]
        if not ok:
            headers.append(("X-Amz-Function-Error", "Unhandled"))
        self.respond(200, headers, response)

    def run_async(self, function, body):
        for attempt, delay in enumerate((0,) + ASYNC_RETRY_DELAYS):
            time.sleep(delay)
            ok, response = function.invoke(body)
            if ok:
                return
            log(f"async {function.name} attempt {attempt + 1} failed: {response[:300]!r}")
        log(f"async {function.name} event dropped after {1 + len(ASYNC_RETRY_DELAYS)} attempts")


def read_env_file(path):
    values = {}
    for line in open(path):
        line = line.strip()
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            values[name] = shlex.split(value)[0] if value else ""
    return values


def up(state):
    """Starts `run` detached and waits until it is ready (or has failed)."""
    os.makedirs(state, exist_ok=True)
    pid_file = os.path.join(state, "stack.pid")
    if os.path.exists(pid_file) and alive(int(open(pid_file).read())):
        log(f"already up: source {os.path.join(state, 'env')}")
        return 0
    with open(os.path.join(state, "stack.log"), "w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "local.stack", "run", state],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    log(f"starting (the first start builds the functions); log: {state}/stack.log")
    while not os.path.exists(os.path.join(state, "ready")):
        if child.poll() is not None:
            log(f"failed to start:\n{open(os.path.join(state, 'stack.log')).read()[-3000:]}")
            return 1
        time.sleep(0.5)
    log(f"up: source {os.path.join(state, 'env')}")
    return 0


def down(state):
    pid_file = os.path.join(state, "stack.pid")
    if not os.path.exists(pid_file):
        log("not running")
        return 0
    pid = int(open(pid_file).read())
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
        for _ in range(300):
            if not alive(pid):
                break
            time.sleep(0.1)
    if os.path.exists(pid_file):
        os.remove(pid_file)
    log("down")
    return 0


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def main():
    if len(sys.argv) == 3 and sys.argv[1] in ("up", "down"):
        sys.exit((up if sys.argv[1] == "up" else down)(os.path.abspath(sys.argv[2])))
    if len(sys.argv) < 2 or sys.argv[1] != "run":
        sys.exit(__doc__)
    del sys.argv[1]
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument("--lambda-port", type=int, default=9000,
                        help="where `cargo lambda invoke` finds the functions, on [::1]")
    parser.add_argument("--bucket", default="s3-transfer-local")
    parser.add_argument("--stack", default="s3-transfer-flow")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="instances per function, and async invocations at once")
    parser.add_argument("--exit-with-parent", action="store_true")
    parser.add_argument("--faults", help="JSON fault configuration (see local/faults.py)")
    parser.add_argument("--release", action="store_true", help="optimized builds of the functions")
    parser.add_argument("--no-build", action="store_true",
                        help="run the binaries in --bin-dir as they are")
    parser.add_argument("--bin-dir", help="where the binaries are (default: cargo's target dir)")
    parser.add_argument("--function-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra environment variable for the functions")
    parser.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="a template parameter other than its default")
    args = parser.parse_args()
    if args.faults:
        Front.injector.configure(json.load(open(args.faults)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    bin_dir = args.bin_dir or os.path.join(target, "release" if args.release else "debug")

    state = os.path.abspath(args.dir)
    os.makedirs(state, exist_ok=True)
    for stale in ("ready", "env"):
        if os.path.exists(os.path.join(state, stale)):
            os.remove(os.path.join(state, stale))
    with open(os.path.join(state, "stack.pid"), "w") as f:
        f.write(str(os.getpid()))
    parent = os.getppid()
    children = []
    functions = None

    def stop(*_, code=0):
        if functions is not None:
            functions.stop()
        for child in reversed(children):
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
        for name in ("ready", "stack.pid"):
            if os.path.exists(os.path.join(state, name)):
                os.remove(os.path.join(state, name))
        sys.exit(code)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def start(name, command, env):
        logfile = open(os.path.join(state, f"{name}.log"), "w")
        child = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        children.append(child)
        return child

    try:
        if not args.no_build:
            log("building the functions")
            # As `make binaries` (or `make release`) builds, so that one set of features is
            # compiled whatever starts first.
            subprocess.run(
                ["cargo", "build", "--workspace", "--locked", "--bins",
                 *(["--release"] if args.release else ["--tests"])],
                cwd=ROOT, check=True,
            )
        missing = [b for b in (*FUNCTIONS, "xtask") if not os.path.exists(os.path.join(bin_dir, b))]
        if missing:
            raise RuntimeError(f"{', '.join(missing)} not built in {bin_dir} (`make binaries` builds them)")

        endpoint = f"http://127.0.0.1:{args.port}"
        moto_port = free_port()
        moto_env = dict(os.environ)
        # moto's Step Functions engine calls Lambda at localhost:$MOTO_PORT: the front.
        moto_env["MOTO_PORT"] = str(args.port)
        moto_env.setdefault("MOTO_ACTIVITY_POLL_SECONDS", "10")
        moto = start("moto", [sys.executable, "-m", "local.moto_server", str(moto_port)], moto_env)
        wait_for_port(moto_port, 60, moto)

        Front.moto_port = moto_port
        Front.background = concurrent.futures.ThreadPoolExecutor(args.concurrency)
        fronts = [ThreadingHTTPServer(("127.0.0.1", args.port), Front)]
        fronts.append(type("IPv6Server", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})(
            (LAMBDA_HOST, args.lambda_port), Front))
        for front in fronts:
            front.daemon_threads = True
            threading.Thread(target=front.serve_forever, daemon=True).start()
        log(f"front on {endpoint} and [{LAMBDA_HOST}]:{args.lambda_port}, moto on port {moto_port}")

        env_file = os.path.join(state, "env.partial")
        functions_file = os.path.join(state, "functions.json")
        subprocess.run(
            [os.path.join(bin_dir, "xtask"), "local-deploy", endpoint, args.stack, args.bucket,
             env_file, functions_file, *args.parameter],
            cwd=ROOT, check=True,
        )
        environment = dict(os.environ)
        environment.update(read_env_file(env_file))
        # One activity poll must end well before status's timeout, as on AWS.
        environment["ACTIVITY_POLL_SECONDS"] = moto_env["MOTO_ACTIVITY_POLL_SECONDS"]
        environment["RUST_LOG"] = environment.get("RUST_LOG", "info")
        for setting in args.function_env:
            name, _, value = setting.partition("=")
            environment[name] = value
        limits = json.load(open(functions_file))
        functions = lambdas.Lambdas(
            {name: dict(binary=os.path.join(bin_dir, name), environment=environment,
                        timeout=limits[name]["timeout"], memory=limits[name]["memory"],
                        concurrency=args.concurrency)
             for name in FUNCTIONS},
            os.path.join(state, "functions.log"),
        )
        Front.lambdas = functions
        os.replace(env_file, os.path.join(state, "env"))
        with open(os.path.join(state, "ready"), "w") as f:
            f.write(endpoint)
        log(f"up: source {os.path.join(args.dir, 'env')}")

        while all(child.poll() is None for child in children):
            if args.exit_with_parent and os.getppid() != parent:
                break
            time.sleep(0.5)
        for child in children:
            if child.poll() is not None:
                log(f"{child.args[0]} {' '.join(child.args[1:3])} exited with {child.returncode}")
    except Exception as error:  # report, then take everything down
        log(f"failed: {error}")
        stop(code=1)
    stop()


if __name__ == "__main__":
    main()
