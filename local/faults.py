"""Faults the local stack's front can inject into the functions' AWS calls, and the
record of which function made which call.

Only requests whose user agent names one of this project's functions
(`app/s3-transfer-flow-<function>`) are ever faulted or recorded: the state machine's
engine, tests seeding buckets and users' own tools are left alone.

The configuration is JSON, given with `python -m local.stack run --faults FILE` or sent at any time
with `PUT /_local/faults`:

  {
    "seed": 7,                          # optional: the same seed makes the same choices
    "rules": [                          # in order; every matching rule's latency adds up,
                                        # and the first matching rule whose dice say so answers
      {"service": "s3",                 # s3 | dynamodb | states | lambda
       "operations": ["CopyObject"],    # optional: API operation names
       "callers": ["slave"],            # optional: master | slave | status
       "key_contains": "deny-",         # optional: S3 key (or copy source) contains this
       "body_contains": "delivered",    # optional: the request's body contains this
       "rate": 0.1,                     # optional, default 1: share of matching requests
       "count": 1,                      # optional: answer at most this many requests
       "latency_ms": 20,                # optional: delay before answering
       "answer": "SlowDown"}            # optional: see ANSWERS; "drop" closes the connection
    ],                                  # unanswered, "drop-after" does so once the request
                                        # took effect; "tamper" (CopyObject) writes other
                                        # bytes of the same size at the destination,
                                        # "tamper-size" one byte more; "tamper"
                                        # (UploadPartCopy) uploads other bytes of the
                                        # same size as the part
    "duplicate_events": ["slave"],      # optional: deliver each Event invocation twice
    "record_calls": true                # optional: keep (caller, service, operation,
  }                                     # resource) for `GET /_local/calls`, each kind
                                        # with its count and when it was last made

`GET /_local/faults` answers how many of each fault were injected since then.
"""

import html
import json
import random
import re
import threading
import time
import urllib.parse

CALLER = re.compile(r"app/s3-transfer-flow-(\w+)")
SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request")

# answer -> (HTTP status, error code, protocol); S3 answers in XML, the others in JSON.
ANSWERS = {
    "SlowDown": (503, "SlowDown", "xml"),
    "InternalError": (500, "InternalError", "xml"),
    "ServiceUnavailable": (503, "ServiceUnavailable", "xml"),
    "AccessDenied": (403, "AccessDenied", "xml"),
    "NotImplemented": (501, "NotImplemented", "xml"),
    "ThrottlingException": (400, "ThrottlingException", "json"),
    "ProvisionedThroughputExceededException": (400, "ProvisionedThroughputExceededException", "json"),
    "InternalServerError": (500, "InternalServerError", "json"),
    "TooManyRequestsException": (429, "TooManyRequestsException", "json"),
}
SPECIAL_ANSWERS = {"drop", "drop-after", "tamper", "tamper-size"}
SERVICES = {"s3", "dynamodb", "states", "lambda"}


class Call:
    """What a request is: who sent it, to which service, which operation, on what."""

    def __init__(self, caller, service, operation, bucket=None, key=None, source=None,
                 prefix=None, keys=None, target=None, kinds=None, versioned=None, body=b""):
        self.caller = caller
        self.service = service
        self.operation = operation
        self.bucket = bucket
        self.key = key
        self.source = source  # CopyObject / UploadPartCopy: "bucket/key", decoded
        self.prefix = prefix  # a listing's prefix
        self.keys = keys  # DeleteObjects: the keys, as a tuple
        self.target = target  # DynamoDB table, Step Functions ARN, Lambda function
        self.kinds = kinds  # TransactWriteItems: the kinds of writes, as a tuple
        self.versioned = versioned  # deletes of version ids (IAM: s3:DeleteObjectVersion)
        self.body = body  # matched by body_contains, never recorded

    def as_dict(self):
        return {k: v for k, v in vars(self).items() if v is not None and k != "body"}


def s3_operation(method, path, query, headers):
    has = lambda name: name in query  # noqa: E731
    bucket, _, key = path.lstrip("/").partition("/")
    copy = "x-amz-copy-source" in headers
    if not key:
        if method == "GET" and has("list-type"):
            return "ListObjectsV2"
        if method == "GET" and has("uploads"):
            return "ListMultipartUploads"
        if method == "GET":
            return "ListObjects"
        if method == "POST" and has("delete"):
            return "DeleteObjects"
        return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}.get(method, method)
    if method == "PUT":
        if has("tagging"):
            return "PutObjectTagging"
        if has("partNumber"):
            return "UploadPartCopy" if copy else "UploadPart"
        return "CopyObject" if copy else "PutObject"
    if method == "GET":
        if has("uploadId"):
            return "ListParts"
        return "GetObjectTagging" if has("tagging") else "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "POST":
        if has("uploads"):
            return "CreateMultipartUpload"
        if has("uploadId"):
            return "CompleteMultipartUpload"
    if method == "DELETE":
        return "AbortMultipartUpload" if has("uploadId") else "DeleteObject"
    return method


def classify(method, raw_path, headers, body):
    """The call a request makes, or None if it does not come from one of the functions."""
    agent = f"{headers.get('User-Agent', '')} {headers.get('X-Amz-User-Agent', '')}"
    caller = CALLER.search(agent)
    if caller is None:
        return None
    scope = SCOPE.search(headers.get("Authorization", ""))
    service = scope.group(1) if scope else "s3"
    split = urllib.parse.urlsplit(raw_path)
    query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
    if service == "s3":
        path = urllib.parse.unquote(split.path)
        bucket, _, key = path.lstrip("/").partition("/")
        source = headers.get("x-amz-copy-source")
        operation = s3_operation(method, path, query, headers)
        keys = versioned = None
        if operation == "DeleteObjects":
            keys = tuple(html.unescape(k) for k in re.findall(r"<Key>(.*?)</Key>", body.decode()))
            versioned = (b"<VersionId>" in body) or None
        if operation == "DeleteObject":
            versioned = ("versionId" in query) or None
        return Call(
            caller.group(1), service, operation,
            bucket=bucket, key=key or None,
            source=urllib.parse.unquote(source.split("?")[0]) if source else None,
            prefix=query["prefix"][0] if operation.startswith("ListObjects") and "prefix" in query
            else None,
            keys=keys, versioned=versioned, body=body,
        )
    target = headers.get("X-Amz-Target", "")
    operation = target.rpartition(".")[2] or method
    resource = None
    if service == "lambda":
        match = re.match(r"^/2015-03-31/functions/([^/]+)/", split.path)
        operation, resource = "Invoke", urllib.parse.unquote(match.group(1)) if match else None
    request = {}
    if service != "lambda":
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            pass
        resource = (request.get("TableName") or request.get("activityArn")
                    or request.get("executionArn")
                    or request.get("taskToken") and "(task token)")
        if service == "dynamodb" and resource is None:
            tables = request.get("RequestItems") or {}
            items = request.get("TransactItems") or []
            names = set(tables) | {
                next(iter(i.values())).get("TableName") for i in items if i
            }
            resource = ",".join(sorted(n for n in names if n)) or None
    kinds = None
    if service == "dynamodb" and operation == "TransactWriteItems":
        kinds = tuple(sorted({kind for item in request.get("TransactItems", []) for kind in item}))
    return Call(caller.group(1), service, operation, target=resource, kinds=kinds, body=body)


class Faults:
    def __init__(self):
        self.lock = threading.Lock()
        self.configure({})

    def configure(self, config):
        for rule in config.get("rules", []):
            if rule.get("service") not in SERVICES:
                raise ValueError(f"rule {rule}: service must be one of {sorted(SERVICES)}")
            answer = rule.get("answer")
            if answer is not None and answer not in ANSWERS and answer not in SPECIAL_ANSWERS:
                raise ValueError(f"rule {rule}: unknown answer {answer!r}")
            unknown = set(rule) - {"service", "operations", "callers", "key_contains",
                                   "body_contains", "rate", "count", "latency_ms", "answer"}
            if unknown:
                raise ValueError(f"rule {rule}: unknown fields {sorted(unknown)}")
        unknown = set(config) - {"seed", "rules", "duplicate_events", "record_calls"}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        with self.lock:
            self.config = config
            self.rules = config.get("rules", [])
            self.dice = random.Random(config.get("seed"))
            self.record = bool(config.get("record_calls"))
            self.calls = {}
            # When the first and the last call of each kind were decided (time.time()).
            self.first_at = {}
            self.last_at = {}
            self.duplicated = set(config.get("duplicate_events", []))
            self.injected = {}
            # How many times each rule has answered, by its position.
            self.answered = [0] * len(self.rules)

    def matches(self, rule, call):
        if rule["service"] != call.service:
            return False
        if "operations" in rule and call.operation not in rule["operations"]:
            return False
        if "callers" in rule and call.caller not in rule["callers"]:
            return False
        if "key_contains" in rule:
            needle = rule["key_contains"]
            if needle not in (call.key or "") and needle not in (call.source or ""):
                return False
        if "body_contains" in rule and rule["body_contains"].encode() not in call.body:
            return False
        return True

    def decide(self, call):
        """Records the call, then returns (seconds to wait, answer or None)."""
        with self.lock:
            if self.record:
                fields = tuple(sorted(call.as_dict().items()))
                self.calls[fields] = self.calls.get(fields, 0) + 1
                now = time.time()
                self.first_at.setdefault(fields, now)
                self.last_at[fields] = now
            latency, answer = 0.0, None
            for position, rule in enumerate(self.rules):
                if not self.matches(rule, call):
                    continue
                latency += rule.get("latency_ms", 0) / 1000
                spent = self.answered[position] >= rule.get("count", float("inf"))
                if (answer is None and "answer" in rule and not spent
                        and self.dice.random() < rule.get("rate", 1.0)):
                    answer = rule["answer"]
                    self.answered[position] += 1
                    key = f"{call.service} {answer}"
                    self.injected[key] = self.injected.get(key, 0) + 1
            return latency, answer

    def duplicates(self, function):
        with self.lock:
            if function in self.duplicated:
                self.injected["duplicate events"] = self.injected.get("duplicate events", 0) + 1
                return True
            return False

    def report(self):
        """How many of each fault were injected since the last configuration."""
        with self.lock:
            return {"injected": dict(self.injected)}

    def recorded(self):
        with self.lock:
            return [dict(fields, count=n, first_at=self.first_at[fields], last_at=self.last_at[fields])
                    for fields, n in self.calls.items()]


def error_answer(answer, call):
    status, code, protocol = ANSWERS[answer]
    message = f"injected by the local stack's front ({call.service} {call.operation})"
    if protocol == "xml":
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>{message}</Message><RequestId>injected</RequestId></Error>")
        return status, [("Content-Type", "application/xml")], body.encode()
    body = json.dumps({"__type": f"com.amazonaws#{code}", "message": message})
    return status, [("Content-Type", "application/x-amz-json-1.0"),
                    ("X-Amzn-ErrorType", code)], body.encode()


def tamper_part_copy(forward, call, path, headers):
    """Instead of copying a range into a part, uploads other bytes of the same size as
    that part and answers as UploadPartCopy would, with the ETag of what was uploaded."""
    auth = {"Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/"
                             "aws4_request, SignedHeaders=host, Signature=0"}
    bucket, _, key = call.source.lstrip("/").partition("/")
    wanted = {k.lower(): v for k, v in headers.items()}.get("x-amz-copy-source-range", "")
    status, _, data = forward("GET", "/" + urllib.parse.quote(f"{bucket}/{key}"),
                              {**auth, "Range": wanted}, b"")
    if status not in (200, 206) or not data:
        return None
    data = bytes([data[0] ^ 0xFF]) + data[1:]
    status, answered, _ = forward("PUT", path, {**auth, "Content-Length": str(len(data))}, data)
    if status != 200:
        return None
    etag = dict((k.lower(), v) for k, v in answered).get("etag", '""')
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    body = (f'<?xml version="1.0" encoding="UTF-8"?><CopyPartResult>'
            f"<LastModified>{stamp}</LastModified><ETag>{etag}</ETag></CopyPartResult>")
    return 200, [("Content-Type", "application/xml")], body.encode()


def tamper_copy(forward, call, headers, grow):
    """Instead of copying, writes bytes that differ from the source's at the destination
    and answers as CopyObject would, with the ETag of what was written and, when the copy
    names a checksum algorithm (`x-amz-checksum-algorithm`), the checksum S3 computes of
    what was written with it."""
    # moto reads the caller from the credential scope and checks no signature.
    auth = {"Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/"
                             "aws4_request, SignedHeaders=host, Signature=0"}
    bucket, _, key = call.source.lstrip("/").partition("/")
    status, _, data = forward("GET", "/" + urllib.parse.quote(f"{bucket}/{key}"), auth, b"")
    if status != 200:
        return None
    data = bytes([data[0] ^ 0xFF]) + data[1:] if data else b"x"
    if grow:
        data += b"!"
    algorithm = {k.lower(): v for k, v in headers.items()}.get("x-amz-checksum-algorithm", "")
    asked = {"x-amz-sdk-checksum-algorithm": algorithm.upper()} if algorithm else {}
    path = "/" + urllib.parse.quote(f"{call.bucket}/{call.key}")
    status, answered, _ = forward(
        "PUT", path, {**auth, **asked, "Content-Length": str(len(data))}, data)
    answered = dict((k.lower(), v) for k, v in answered)
    etag = answered.get("etag", '""')
    checksum = answered.get(f"x-amz-checksum-{algorithm.lower()}") if algorithm else None
    element = f"Checksum{algorithm.upper()}"
    reported = f"<{element}>{checksum}</{element}>" if checksum else ""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    body = (f'<?xml version="1.0" encoding="UTF-8"?><CopyObjectResult>'
            f"<LastModified>{stamp}</LastModified><ETag>{etag}</ETag>{reported}"
            "</CopyObjectResult>")
    return 200, [("Content-Type", "application/xml")], body.encode()
