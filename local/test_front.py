"""Tests of the front's own limits (stack.py), with a stand-in function behind it.

Run with: python -m unittest discover -s local -t .   (make test runs them)
"""

import concurrent.futures
import http.client
import json
import os
import socket
import stat
import sys
import tempfile
import threading
import unittest
from http.server import ThreadingHTTPServer

from . import lambdas, stack
from .test_lambdas import FUNCTION


class FrontTest(unittest.TestCase):
    def setUp(self):
        directory = tempfile.mkdtemp()
        binary = os.path.join(directory, "function")
        with open(binary, "w") as f:
            f.write(FUNCTION.replace("PYTHON", sys.executable))
        os.chmod(binary, os.stat(binary).st_mode | stat.S_IEXEC)
        functions = lambdas.Lambdas(
            {"fn": dict(binary=binary, environment=dict(os.environ), timeout=30, memory=128,
                        concurrency=2)},
            os.path.join(directory, "functions.log"),
        )
        self.addCleanup(functions.stop)
        front = type("TestFront", (stack.Front,), {
            "lambdas": functions,
            "background": concurrent.futures.ThreadPoolExecutor(2),
        })
        server = ThreadingHTTPServer(("127.0.0.1", 0), front)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.shutdown)
        self.port = server.server_address[1]

    def invoke(self, kind, payload):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        connection.request("POST", "/2015-03-31/functions/fn/invocations", body=payload,
                           headers={"X-Amz-Invocation-Type": kind})
        response = connection.getresponse()
        return response.status, response.getheader("X-Amzn-ErrorType"), response.read()

    def padded(self, size):
        """A JSON event of exactly `size` bytes."""
        skeleton = json.dumps({"pad": ""})
        return json.dumps({"pad": "x" * (size - len(skeleton))}).encode()

    def test_an_async_invocation_over_one_megabyte_is_refused_as_lambda_refuses_it(self):
        status, error, _ = self.invoke("Event", self.padded(1024 * 1024 + 1))
        self.assertEqual((status, error), (413, "RequestEntityTooLargeException"))
        status, error, _ = self.invoke("Event", self.padded(1024 * 1024))
        self.assertEqual((status, error), (202, None))

    def test_a_sync_invocation_over_six_megabytes_is_refused_as_lambda_refuses_it(self):
        status, error, _ = self.invoke("RequestResponse", self.padded(6 * 1024 * 1024 + 1))
        self.assertEqual((status, error), (413, "RequestEntityTooLargeException"))
        status, _, body = self.invoke("RequestResponse", self.padded(2 * 1024 * 1024))
        self.assertEqual(status, 200)
        self.assertEqual(len(json.loads(body)["echo"]["pad"]), 2 * 1024 * 1024 - 11)

    def test_an_error_injected_into_a_head_has_no_body_as_s3_answers_it(self):
        self.addCleanup(stack.Front.injector.configure, {})
        stack.Front.injector.configure({"rules": [
            {"service": "s3", "operations": ["HeadObject", "GetObject"], "answer": "SlowDown"}]})
        answers = {}
        for method in ("HEAD", "GET"):
            # Raw bytes: an HTTP client reads no body after a HEAD whatever is sent.
            with socket.create_connection(("127.0.0.1", self.port), timeout=60) as raw:
                raw.sendall(
                    f"{method} /bucket/raw/a.csv HTTP/1.1\r\nHost: local\r\n"
                    "User-Agent: aws-sdk-rust app/s3-transfer-flow-slave\r\n"
                    "Authorization: AWS4-HMAC-SHA256 "
                    "Credential=k/20261128/us-east-1/s3/aws4_request\r\n"
                    "Connection: close\r\n\r\n".encode())
                received = b""
                while chunk := raw.recv(65536):
                    received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            answers[method] = (head.split(b"\r\n")[0], body)
        self.assertEqual(answers["HEAD"], (b"HTTP/1.1 503 Service Unavailable", b""))
        self.assertEqual(answers["GET"][0], b"HTTP/1.1 503 Service Unavailable")
        self.assertIn(b"<Code>SlowDown</Code>", answers["GET"][1])


if __name__ == "__main__":
    unittest.main()
