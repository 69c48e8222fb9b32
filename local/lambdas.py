"""Local Lambda: runs the functions' binaries as AWS Lambda runs them.

Each instance of a function is a process of its binary (`bootstrap` on AWS), which
takes one invocation at a time from the Lambda runtime API served here
(`AWS_LAMBDA_RUNTIME_API`). An invocation goes to an idle instance; when none is idle,
a new instance starts (a cold start), up to the function's concurrency, and otherwise
the invocation waits for one. As on AWS:

  * each invocation carries its deadline (`Lambda-Runtime-Deadline-Ms`, Unix time in
    milliseconds), the function's timeout from now;
  * an instance that runs past the deadline is stopped, and the invocation fails with
    `Sandbox.Timedout`;
  * an instance that exits while it handles an invocation (a crash, an abort) fails it
    with `Runtime.ExitError`, and a new instance takes the next invocation;
  * a function error comes back as the error document the runtime posted.

The binaries are whatever build the caller points at, so the functions start in
milliseconds instead of going through cargo.
"""

import collections
import itertools
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACCOUNT = "123456789012"
REGION = "us-east-1"
API = re.compile(r"^/(?P<function>[\w-]+)/(?P<instance>\d+)/2018-06-01/runtime/"
                 r"(?P<call>invocation/next|invocation/(?P<id>[^/]+)/(?P<outcome>response|error)|init/error)$")


class Invocation:
    def __init__(self, payload, timeout):
        self.id = str(uuid.uuid4())
        self.payload = payload
        self.deadline = time.time() + timeout
        self.done = threading.Event()
        # (True, response body) or (False, error document)
        self.result = None

    def finish(self, ok, body):
        if not self.done.is_set():
            self.result = (ok, body)
            self.done.set()


def error_document(error_type, message):
    return json.dumps({"errorType": error_type, "errorMessage": message}).encode()


class Function:
    """One function: its binary, settings, instances and invocations waiting for one."""

    def __init__(self, name, binary, environment, timeout, memory, concurrency, api, log):
        self.name = name
        self.binary = binary
        self.environment = environment
        self.timeout = timeout
        self.memory = memory
        self.concurrency = concurrency
        self.api = api
        self.log = log
        self.lock = threading.Condition()
        self.waiting = collections.deque()
        self.instances = {}
        # Instances waiting for an invocation, and instances started that have not asked
        # for one yet: between them they take the next invocations without a new start.
        self.idle = 0
        self.starting = 0
        self.numbers = itertools.count(1)

    def invoke(self, payload):
        """Runs one invocation to its end; returns (ok, body)."""
        invocation = Invocation(payload, self.timeout)
        with self.lock:
            self.waiting.append(invocation)
            self.start_instances()
            self.lock.notify()
        # The deadline counts from when an instance takes the invocation; the queue wait
        # before that is bounded by the other invocations' own timeouts.
        while not invocation.done.wait(1):
            instance = self.running(invocation)
            if instance is not None and time.time() > invocation.deadline:
                instance.stop()
                invocation.finish(False, error_document(
                    "Sandbox.Timedout", f"Task timed out after {self.timeout:.2f} seconds"))
        return invocation.result

    def running(self, invocation):
        with self.lock:
            return next((i for i in self.instances.values() if i.current is invocation), None)

    def start_instances(self):
        """Starts instances for the invocations no instance will take, as far as the
        concurrency allows. Called with the lock held."""
        while (len(self.waiting) > self.idle + self.starting
               and len(self.instances) < self.concurrency):
            number = next(self.numbers)
            instance = Instance(self, number)
            self.instances[number] = instance
            self.starting += 1
            instance.start()

    def next_invocation(self, instance):
        """Blocks until an invocation is waiting, then hands it to `instance`; `None` if
        the instance exits meanwhile."""
        with self.lock:
            instance.current = None
            if not instance.ready:
                instance.ready = True
                self.starting -= 1
            self.idle += 1
            try:
                while not self.waiting and instance.number in self.instances:
                    self.lock.wait()
                if instance.number not in self.instances:
                    return None
                invocation = self.waiting.popleft()
            finally:
                self.idle -= 1
            invocation.deadline = time.time() + self.timeout
            instance.current = invocation
            return invocation

    def hand_back(self, invocation):
        """An invocation whose instance could not take it waits for the next one."""
        with self.lock:
            if invocation.done.is_set():
                return  # its instance's exit already failed it
            for instance in self.instances.values():
                if instance.current is invocation:
                    instance.current = None
            self.waiting.appendleft(invocation)
            self.start_instances()
            self.lock.notify()

    def instance_exited(self, instance, code):
        with self.lock:
            self.instances.pop(instance.number, None)
            invocation, instance.current = instance.current, None
            if not instance.ready:
                # It died before asking for work: as on AWS, an invocation that was
                # waiting for it fails with it, instead of instances starting forever.
                self.starting -= 1
                if self.waiting:
                    invocation = self.waiting.popleft()
            self.start_instances()
            # Its waiting request for the next invocation, if any, must give up.
            self.lock.notify_all()
        if invocation is not None:
            invocation.finish(False, error_document(
                "Runtime.ExitError",
                f"RequestId: {invocation.id} Error: Runtime exited with status {code}"))

    def stop(self):
        with self.lock:
            instances = list(self.instances.values())
        for instance in instances:
            instance.stop()


class Instance:
    def __init__(self, function, number):
        self.function = function
        self.number = number
        self.current = None
        self.process = None
        # Whether it has asked for an invocation yet.
        self.ready = False
        # time.perf_counter() when the process was started, and when it first asked for
        # an invocation: the difference is its cold start.
        self.started = None
        self.first_poll = None

    def start(self):
        f = self.function
        env = dict(f.environment)
        env.update({
            "AWS_LAMBDA_RUNTIME_API": f"http://{f.api}/{f.name}/{self.number}",
            "AWS_LAMBDA_FUNCTION_NAME": f.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(f.memory),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{f.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"local/{self.number}",
        })
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [f.binary], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        threading.Thread(target=self.watch, daemon=True).start()

    def watch(self):
        """Copies the instance's output to the log, then reports its exit."""
        prefix = f"[{self.function.name}#{self.number}] ".encode()
        with self.process.stdout:
            for line in self.process.stdout:
                self.function.log(prefix + line)
        code = self.process.wait()
        self.function.instance_exited(self, code)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()


class RuntimeServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # An instance that is stopped drops its connection: nothing to report.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class Lambdas:
    """The functions of the local stack, and the runtime API their instances call."""

    def __init__(self, functions, log_path):
        """`functions`: name -> dict(binary, environment, timeout, memory, concurrency)."""
        self.log_file = open(log_path, "ab", buffering=0)
        self.log_lock = threading.Lock()
        self.server = RuntimeServer(("127.0.0.1", 0), RuntimeApi)
        self.server.lambdas = self
        api = f"127.0.0.1:{self.server.server_address[1]}"
        self.functions = {
            name: Function(name, api=api, log=self.log, **settings)
            for name, settings in functions.items()
        }
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def log(self, line):
        with self.log_lock:
            if not self.log_file.closed:
                self.log_file.write(line)

    def function(self, name):
        return self.functions.get(name)

    def stop(self):
        for function in self.functions.values():
            function.stop()
        self.server.shutdown()
        self.server.server_close()
        with self.log_lock:
            self.log_file.close()


class RuntimeApi(BaseHTTPRequestHandler):
    """The Lambda runtime API, one path prefix per instance: /{function}/{instance}/..."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route(self):
        match = API.match(self.path)
        if match is None:
            return None, None
        function = self.server.lambdas.function(match.group("function"))
        instance = function and function.instances.get(int(match.group("instance")))
        return match, instance

    def do_GET(self):
        match, instance = self.route()
        if instance is None or match.group("call") != "invocation/next":
            return self.reply(404)
        if instance.first_poll is None:
            instance.first_poll = time.perf_counter()
        function = instance.function
        invocation = function.next_invocation(instance)
        if invocation is None:
            return self.reply(410)
        try:
            self.reply(200, invocation.payload, [
                ("Content-Type", "application/json"),
                ("Lambda-Runtime-Aws-Request-Id", invocation.id),
                ("Lambda-Runtime-Deadline-Ms", str(int(invocation.deadline * 1000))),
                ("Lambda-Runtime-Invoked-Function-Arn",
                 f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function.name}"),
                ("Lambda-Runtime-Trace-Id",
                 f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"),
            ])
        except OSError:
            # The instance went away between asking and being answered.
            function.hand_back(invocation)

    def do_POST(self):
        match, instance = self.route()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if instance is None:
            return self.reply(404)
        if match.group("call") == "init/error":
            instance.function.log(f"[{instance.function.name}#{instance.number}] init error: ".encode()
                                  + body + b"\n")
            return self.reply(202, b"{}")
        invocation = instance.current
        if invocation is None or invocation.id != match.group("id"):
            return self.reply(400, error_document("InvalidRequestId", "not this instance's invocation"))
        invocation.finish(match.group("outcome") == "response", body)
        self.reply(202, b"{}")
