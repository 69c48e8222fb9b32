"""Tests of local Lambda (lambdas.py) with a stand-in function: a small Python program
that speaks the Lambda runtime API and does what each event says.

Run with: python -m unittest discover -s local -t .   (make test runs them)
"""

import json
import os
import stat
import sys
import tempfile
import threading
import time
import unittest

from . import lambdas

# Echoes the event, or fails, crashes, sleeps or dies at start, as the event asks.
FUNCTION = r'''#!PYTHON
import json, os, sys, time, urllib.request
api = os.environ["AWS_LAMBDA_RUNTIME_API"]
if os.environ.get("DIE_AT_START"):
    sys.exit(3)
while True:
    with urllib.request.urlopen(f"{api}/2018-06-01/runtime/invocation/next") as r:
        request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
        deadline_ms = int(r.headers["Lambda-Runtime-Deadline-Ms"])
        event = json.loads(r.read())
    action = event.get("action")
    if action == "crash":
        os.abort()
    if action == "sleep":
        time.sleep(event["seconds"])
    outcome, body = "response", {"echo": event, "pid": os.getpid(), "deadline_ms": deadline_ms}
    if action == "fail":
        outcome, body = "error", {"errorType": "Refused", "errorMessage": "as asked"}
    urllib.request.urlopen(urllib.request.Request(
        f"{api}/2018-06-01/runtime/invocation/{request_id}/{outcome}",
        data=json.dumps(body).encode(), method="POST")).read()
'''


class LocalLambdaTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.binary = os.path.join(self.dir, "function")
        with open(self.binary, "w") as f:
            f.write(FUNCTION.replace("PYTHON", sys.executable))
        os.chmod(self.binary, os.stat(self.binary).st_mode | stat.S_IEXEC)
        self.started = []

    def function(self, concurrency=2, timeout=30, environment=None):
        local = lambdas.Lambdas(
            {"fn": dict(binary=self.binary, environment=dict(os.environ, **(environment or {})),
                        timeout=timeout, memory=128, concurrency=concurrency)},
            os.path.join(self.dir, "functions.log"),
        )
        self.addCleanup(local.stop)
        return local.function("fn")

    def invoke(self, function, event):
        ok, body = function.invoke(json.dumps(event).encode())
        return ok, json.loads(body)

    def test_invocations_one_after_another_reuse_one_instance(self):
        fn = self.function()
        first = self.invoke(fn, {"n": 1})
        second = self.invoke(fn, {"n": 2})
        self.assertEqual((first[0], first[1]["echo"]), (True, {"n": 1}))
        self.assertEqual((second[0], second[1]["echo"]), (True, {"n": 2}))
        self.assertEqual(first[1]["pid"], second[1]["pid"], "a warm instance took the second")

    def test_invocations_at_once_start_instances_up_to_the_concurrency(self):
        fn = self.function(concurrency=3)
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            self.invoke(fn, {"action": "sleep", "seconds": 1}))) for _ in range(6)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertTrue(all(ok for ok, _ in results))
        self.assertEqual(len({body["pid"] for _, body in results}), 3)
        # 6 one-second invocations on 3 instances take two rounds, not one or six
        self.assertLess(time.monotonic() - started, 4)

    def test_a_crash_fails_its_invocation_and_a_new_instance_takes_the_next(self):
        fn = self.function()
        ok, body = self.invoke(fn, {"action": "crash"})
        self.assertFalse(ok)
        self.assertEqual(body["errorType"], "Runtime.ExitError")
        ok, body = self.invoke(fn, {"n": 3})
        self.assertTrue(ok)

    def test_an_invocation_past_its_timeout_fails_and_its_instance_is_stopped(self):
        fn = self.function(timeout=1)
        ok, body = self.invoke(fn, {"action": "sleep", "seconds": 30})
        self.assertFalse(ok)
        self.assertEqual(body["errorType"], "Sandbox.Timedout")
        ok, body = self.invoke(fn, {"n": 4})
        self.assertTrue(ok)
        # the deadline handed to the function is the timeout from now, in Unix milliseconds
        self.assertLess(abs(body["deadline_ms"] / 1000 - (time.time() + 1)), 1)

    def test_a_function_error_comes_back_as_the_error_it_posted(self):
        fn = self.function()
        self.assertEqual(self.invoke(fn, {"action": "fail"}),
                         (False, {"errorType": "Refused", "errorMessage": "as asked"}))

    def test_an_instance_that_dies_at_start_fails_the_invocation_waiting_for_it(self):
        fn = self.function(environment={"DIE_AT_START": "1"})
        ok, body = self.invoke(fn, {"n": 5})
        self.assertFalse(ok)
        self.assertEqual(body["errorType"], "Runtime.ExitError")
        self.assertEqual(fn.instances, {})


if __name__ == "__main__":
    unittest.main()
