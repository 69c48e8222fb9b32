"""The local AWS server's strict layer: what AWS refuses and moto accepts.

moto is more lenient than AWS in ways that would let this project's tests pass while
the same code fails on AWS. This WSGI layer sits in front of moto's application (every
client of the local server goes through it: the functions, the state machine's engine,
the tests) and refuses what AWS refuses, each rule with the AWS limit it enforces:

  S3
    * a request about a bucket, signed for another region than the bucket's, answers
      301 PermanentRedirect with the bucket's region in `x-amz-bucket-region` (HeadBucket
      too, without a body); moto serves every bucket from every region;
    * a request whose `x-amz-expected-bucket-owner` (or, on a copy,
      `x-amz-source-expected-bucket-owner`) names another account than the bucket's
      owner answers 403 AccessDenied; moto ignores both;
    * an object key longer than 1,024 bytes of UTF-8 (KeyTooLongError);
    * a DeleteObjects request of more than 1,000 keys (MalformedXML);
    * DeleteObjects with a per-key ETag: a key whose current ETag differs is not deleted
      and answers PreconditionFailed in the result (conditional deletes, 2025-09);
    * CopyObject and UploadPartCopy with `x-amz-copy-source-if-match`: a source whose
      ETag differs answers 412 PreconditionFailed;
    * CopyObject and CompleteMultipartUpload with `If-None-Match: *` (a destination that
      exists) or `If-Match` (one whose ETag differs) answer 412 PreconditionFailed;
    * CompleteMultipartUpload with `x-amz-checksum-type: FULL_OBJECT` and the object's
      expected checksum: parts whose bytes have another checksum answer 400 BadDigest and
      the upload stays open (full-object checksums, 2024-12).
  DynamoDB
    * BatchWriteItem of more than 25 items, BatchGetItem of more than 100 keys,
      TransactWriteItems of more than 100 actions or more than 4 MB;
    * an item larger than 400 KB in any write.
  Step Functions
    * SendTaskSuccess output and StartExecution input over 256 KiB, a SendTaskFailure
      cause over 32,768 characters or an error over 256.

Step Functions' own behaviour (an activity task handed out once, a closed task's token
answering TaskTimedOut, heartbeat timeouts) is fixed in moto_server.py, where the engine
lives; Lambda's payload limits in the front (stack.py), which serves Lambda.

The checks that need an object's ETag read it from moto's S3 backend in this process.
Buckets are addressed path-style, as every client of the local stack does.
`LOCAL_AWS_STRICT=0` turns the layer off, to see what moto alone would do.
"""

import base64
import http.client
import io
import json
import re
import urllib.parse
import xml.etree.ElementTree as ElementTree

from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.s3.utils import compute_checksum

from .faults import s3_operation

MAX_KEY_BYTES = 1024
MAX_DELETE_OBJECTS = 1000
MAX_BATCH_WRITE_ITEMS = 25
MAX_BATCH_GET_KEYS = 100
MAX_TRANSACT_ITEMS = 100
MAX_TRANSACT_BYTES = 4 * 1024 * 1024
MAX_ITEM_BYTES = 400 * 1024
MAX_STATE_PAYLOAD_BYTES = 256 * 1024
MAX_TASK_FAILURE_CAUSE = 32768
MAX_TASK_FAILURE_ERROR = 256

SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request")
SIGNED_REGION = re.compile(r"Credential=[^/]+/[^/]+/([^/]+)/[^/]+/aws4_request")
# Requests S3 serves whatever region they are signed for.
ANY_REGION_OPERATIONS = {"CreateBucket", "ListBuckets"}
EXPECTED_OWNER_HEADERS = ("x-amz-expected-bucket-owner", "x-amz-source-expected-bucket-owner")
S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
# A DeleteObjects body written back keeps S3's namespace as the default one.
ElementTree.register_namespace("", S3_NAMESPACE)
# Object operations that name a key (bucket operations have none).
OBJECT_OPERATIONS = {
    "PutObject", "CopyObject", "GetObject", "HeadObject", "DeleteObject", "UploadPart",
    "UploadPartCopy", "CreateMultipartUpload", "CompleteMultipartUpload",
    "AbortMultipartUpload", "GetObjectTagging", "PutObjectTagging",
}


class Refusal(Exception):
    """An answer AWS would give instead of doing what was asked."""

    def __init__(self, status, code, message, protocol, headers=(), details=""):
        super().__init__(message)
        self.status, self.code, self.message, self.protocol = status, code, message, protocol
        self.headers, self.details = list(headers), details

    def response(self, head=False):
        if self.protocol == "xml":
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{self.code}</Code>'
                    f"<Message>{xml_text(self.message)}</Message>{self.details}"
                    f"<RequestId>strict</RequestId></Error>").encode()
            headers = [("Content-Type", "application/xml")] + self.headers
        else:
            body = json.dumps({"__type": f"com.amazonaws#{self.code}",
                               "message": self.message}).encode()
            headers = [("Content-Type", "application/x-amz-json-1.0"),
                       ("X-Amzn-ErrorType", self.code)]
        return self.status, headers, b"" if head else body


def s3_refusal(status, code, message):
    return Refusal(status, code, message, "xml")


def json_refusal(code, message):
    return Refusal(400, code, message, "json")


def xml_text(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def bare_etag(etag):
    return (etag or "").strip().strip('"')


class Request:
    """What the layer needs to know of one request."""

    def __init__(self, environ, body):
        self.environ = environ
        self.body = body
        self.method = environ["REQUEST_METHOD"]
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
        split = urllib.parse.urlsplit(raw)
        self.raw_path = split.path
        self.query = urllib.parse.parse_qs(split.query or environ.get("QUERY_STRING", ""),
                                           keep_blank_values=True)
        self.headers = {key[5:].replace("_", "-").lower(): value
                        for key, value in environ.items() if key.startswith("HTTP_")}
        if "CONTENT_TYPE" in environ:
            self.headers["content-type"] = environ["CONTENT_TYPE"]
        scope = SCOPE.search(self.headers.get("authorization", ""))
        credential = self.query.get("X-Amz-Credential", [""])[0]
        self.service = scope.group(1) if scope else (
            credential.split("/")[3] if credential.count("/") >= 4 else "s3")
        self.target = self.headers.get("x-amz-target", "").rpartition(".")[2]


class Strict:
    """The WSGI layer around moto's application."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        body = read_body(environ)
        request = Request(environ, body)
        try:
            if request.service == "s3":
                answer = self.s3(request)
            elif request.service == "dynamodb":
                answer = check_dynamodb(request)
            elif request.service == "states":
                answer = check_states(request)
            else:
                answer = None
        except Refusal as refusal:
            answer = refusal.response(head=request.method == "HEAD")
        if answer is not None:
            status, headers, payload = answer
            start_response(f"{status} {http.client.responses.get(status, '')}",
                           headers + [("Content-Length", str(len(payload)))])
            return [payload]
        return self.app(environ, start_response)

    # ---- S3 ------------------------------------------------------------------------

    def s3(self, request):
        path = urllib.parse.unquote(request.raw_path)
        bucket, _, key = path.lstrip("/").partition("/")
        headers = {k: v for k, v in request.headers.items()}
        operation = s3_operation(request.method, path, request.query, headers)
        # A bucket's own settings (PUT ?versioning, say) are not CreateBucket, whatever
        # the request's operation name here.
        any_region = operation in ANY_REGION_OPERATIONS and not request.query
        if bucket and not any_region:
            self.check_region(request, bucket)
            self.check_expected_owners(request)
        if operation in OBJECT_OPERATIONS and len(key.encode()) > MAX_KEY_BYTES:
            # S3 object keys are at most 1,024 bytes of UTF-8.
            raise s3_refusal(400, "KeyTooLongError", "Your key is too long")
        if operation in ("CopyObject", "UploadPartCopy"):
            self.check_copy_source(request)
        if operation in ("CopyObject", "CompleteMultipartUpload"):
            self.check_destination_conditions(request, bucket, key)
        if operation == "CompleteMultipartUpload":
            self.check_full_object_checksum(request, bucket)
        if operation == "DeleteObjects":
            return self.delete_objects(request, bucket)
        return None

    @staticmethod
    def check_region(request, bucket):
        # S3 serves a bucket from its own region only: a request signed for another
        # region answers 301 PermanentRedirect naming the bucket's region (S3 API
        # reference, HeadBucket; error responses), and the SDKs do not follow it.
        scope = SIGNED_REGION.search(request.headers.get("authorization", ""))
        credential = request.query.get("X-Amz-Credential", [""])[0].split("/")
        signed = scope.group(1) if scope else (credential[2] if len(credential) >= 5 else None)
        found = s3_backends[DEFAULT_ACCOUNT_ID]["global"].buckets.get(bucket)
        if signed is None or found is None or found.region_name == signed:
            return
        region = found.region_name
        raise Refusal(
            301, "PermanentRedirect",
            "The bucket you are attempting to access must be addressed using the specified "
            "endpoint. Please send all future requests to this endpoint.", "xml",
            headers=[("x-amz-bucket-region", region)],
            details=(f"<Endpoint>{bucket}.s3.{region}.amazonaws.com</Endpoint>"
                     f"<Bucket>{xml_text(bucket)}</Bucket>"))

    @staticmethod
    def check_expected_owners(request):
        # Every bucket of the local stack is the one account's; a request that expects
        # another owner is refused as S3 refuses it.
        for header in EXPECTED_OWNER_HEADERS:
            owner = request.headers.get(header)
            if owner is not None and owner != DEFAULT_ACCOUNT_ID:
                raise s3_refusal(403, "AccessDenied", "Access Denied")

    @staticmethod
    def etag(bucket, key):
        """The object's current ETag, or None if it (or its bucket) does not exist."""
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        try:
            found = backend.get_object(bucket, key)
        except Exception:  # moto's MissingBucket: S3 answers that itself
            return None
        return found.etag if found is not None else None

    def check_copy_source(self, request):
        # CopyObject and UploadPartCopy copy only a source whose ETag matches
        # x-amz-copy-source-if-match (S3 API reference, CopyObject); moto ignores it.
        wanted = request.headers.get("x-amz-copy-source-if-match")
        if wanted is None:
            return
        source = urllib.parse.unquote(request.headers["x-amz-copy-source"].split("?")[0])
        bucket, _, key = source.lstrip("/").partition("/")
        etag = self.etag(bucket, key)
        if etag is not None and bare_etag(etag) != bare_etag(wanted):
            raise s3_refusal(412, "PreconditionFailed",
                             "At least one of the pre-conditions you specified did not hold")

    def check_destination_conditions(self, request, bucket, key):
        # Conditional writes: If-None-Match: * refuses to overwrite, If-Match to write
        # over anything but the named ETag (CopyObject since 2025-10, CompleteMultipartUpload
        # since 2024-08). moto checks them on PutObject only.
        none_match = request.headers.get("if-none-match")
        match = request.headers.get("if-match")
        if none_match is None and match is None:
            return
        etag = self.etag(bucket, key)
        if none_match == "*" and etag is not None:
            raise s3_refusal(412, "PreconditionFailed",
                             "At least one of the pre-conditions you specified did not hold")
        if match is not None:
            if etag is None:
                raise s3_refusal(404, "NoSuchKey", "The specified key does not exist.")
            if bare_etag(etag) != bare_etag(match):
                raise s3_refusal(412, "PreconditionFailed",
                                 "At least one of the pre-conditions you specified did not hold")

    def check_full_object_checksum(self, request, bucket):
        # S3 computes the checksum of the object the parts make and refuses to complete
        # when it is not the one the request names; moto completes whatever it is given.
        if request.headers.get("x-amz-checksum-type", "").upper() != "FULL_OBJECT":
            return
        expected = {name[len("x-amz-checksum-"):].upper(): value
                    for name, value in request.headers.items()
                    if name.startswith("x-amz-checksum-") and name != "x-amz-checksum-type"}
        upload_id = request.query.get("uploadId", [""])[0]
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        try:
            upload = backend.get_bucket(bucket).multiparts.get(upload_id)
        except Exception:  # moto's MissingBucket: S3 answers that itself
            return
        if upload is None or not expected:
            return
        try:
            document = ElementTree.fromstring(request.body)
        except ElementTree.ParseError:
            return
        numbers = [int(child.text or 0) for child in document.iter()
                   if local_name(child.tag) == "PartNumber"]
        if any(n not in upload.parts for n in numbers):
            return  # moto answers InvalidPart itself
        data = b"".join(upload.parts[n].value for n in numbers)
        for algorithm, value in expected.items():
            if compute_checksum(data, algorithm).decode() != value:
                raise s3_refusal(400, "BadDigest",
                                 f"The {algorithm} you specified did not match the "
                                 "calculated checksum.")

    def delete_objects(self, request, bucket):
        """Up to 1,000 keys, each deleted only if its ETag (when given) still matches."""
        try:
            document = ElementTree.fromstring(request.body)
        except ElementTree.ParseError as error:
            # XML 1.0 cannot carry some characters (ASCII controls): AWS refuses too.
            raise s3_refusal(400, "MalformedXML", f"The XML you provided was not well-formed: {error}")
        objects = [child for child in document if local_name(child.tag) == "Object"]
        if len(objects) > MAX_DELETE_OBJECTS:
            raise s3_refusal(400, "MalformedXML",
                             "The XML you provided was not well-formed or did not validate "
                             f"against our published schema ({len(objects)} keys; at most 1000)")
        refused = []
        for element in objects:
            fields = {local_name(child.tag): child.text or "" for child in element}
            if "ETag" not in fields:
                continue
            current = self.etag(bucket, fields.get("Key", ""))
            if current is None:
                refused.append((fields["Key"], "NoSuchKey", "The specified key does not exist."))
            elif bare_etag(current) != bare_etag(fields["ETag"]):
                refused.append((fields["Key"], "PreconditionFailed",
                                "At least one of the pre-conditions you specified did not hold"))
        if not refused:
            return None
        refused_keys = {key for key, _, _ in refused}
        for element in objects:
            key = next((child.text or "" for child in element if local_name(child.tag) == "Key"), "")
            if key in refused_keys:
                document.remove(element)
        errors = "".join(
            f"<Error><Key>{xml_text(key)}</Key><Code>{code}</Code>"
            f"<Message>{xml_text(message)}</Message></Error>"
            for key, code, message in refused
        )
        if not any(local_name(child.tag) == "Object" for child in document):
            body = (f'<?xml version="1.0" encoding="UTF-8"?>'
                    f'<DeleteResult xmlns="{S3_NAMESPACE}">{errors}</DeleteResult>').encode()
            return 200, [("Content-Type", "application/xml")], body
        status, headers, body = self.forward(request, ElementTree.tostring(document))
        if status != 200:
            return status, headers, body
        text = body.decode()
        closing = text.rfind("</DeleteResult>")
        body = (text[:closing] + errors + text[closing:]).encode()
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        return status, headers, body

    def forward(self, request, body):
        """Runs moto's application on the request with another body."""
        environ = dict(request.environ)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        # The body changed, so its digests no longer hold.
        for name in list(environ):
            if name in ("HTTP_CONTENT_MD5",) or name.startswith("HTTP_X_AMZ_CHECKSUM"):
                del environ[name]
        answer = {}

        def start_response(status, headers, exc_info=None):
            answer["status"] = int(status.split()[0])
            answer["headers"] = headers

        chunks = self.app(environ, start_response)
        payload = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        return answer["status"], answer["headers"], payload


def local_name(tag):
    return tag.rsplit("}", 1)[-1]


def read_body(environ):
    """Reads the whole body and puts it back for moto to read."""
    stream = environ["wsgi.input"]
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked" or environ.get(
            "wsgi.input_terminated"):
        body = stream.read()
    else:
        body = stream.read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


# ---- DynamoDB ------------------------------------------------------------------------

def check_dynamodb(request):
    try:
        call = json.loads(request.body or b"{}")
    except ValueError:
        return None
    target = request.target
    if target == "BatchWriteItem":
        writes = [w for table in call.get("RequestItems", {}).values() for w in table]
        if len(writes) > MAX_BATCH_WRITE_ITEMS:
            raise json_refusal("ValidationException",
                               "Too many items requested for the BatchWriteItem call "
                               f"({len(writes)}; at most {MAX_BATCH_WRITE_ITEMS})")
        for write in writes:
            check_item(write.get("PutRequest", {}).get("Item"))
    elif target == "BatchGetItem":
        keys = sum(len(t.get("Keys", [])) for t in call.get("RequestItems", {}).values())
        if keys > MAX_BATCH_GET_KEYS:
            raise json_refusal("ValidationException",
                               "Too many items requested for the BatchGetItem call "
                               f"({keys}; at most {MAX_BATCH_GET_KEYS})")
    elif target == "TransactWriteItems":
        actions = call.get("TransactItems", [])
        if len(actions) > MAX_TRANSACT_ITEMS:
            raise json_refusal("ValidationException",
                               "1 validation error detected: Value at 'transactItems' failed to "
                               "satisfy constraint: Member must have length less than or equal "
                               f"to {MAX_TRANSACT_ITEMS}")
        total = 0
        for action in actions:
            for kind in action.values():
                size = check_item(kind.get("Item"))
                total += size + sum(item_size(v) for v in kind.get("Key", {}).values())
        if total > MAX_TRANSACT_BYTES:
            raise json_refusal("ValidationException",
                               f"Transaction request cannot be larger than 4 MB ({total} bytes)")
    elif target == "PutItem":
        check_item(call.get("Item"))
    return None


def check_item(item):
    """The item's size; an item over 400 KB is refused, as DynamoDB refuses it."""
    if not item:
        return 0
    size = sum(len(name.encode()) + item_size(value) for name, value in item.items())
    if size > MAX_ITEM_BYTES:
        raise json_refusal("ValidationException",
                           f"Item size has exceeded the maximum allowed size ({size} bytes)")
    return size


def item_size(value):
    """An attribute value's size as DynamoDB counts it (its documented approximation)."""
    (kind, inner), = value.items()
    if kind == "S":
        return len(inner.encode())
    if kind == "N":
        return len(inner.strip("-").lstrip("0").replace(".", "")) // 2 + 2
    if kind == "B":
        return len(base64.b64decode(inner))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        return sum(item_size({kind[0]: v}) for v in inner)
    if kind == "L":
        return 3 + sum(1 + item_size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + item_size(v) for k, v in inner.items())
    return 0


# ---- Step Functions ------------------------------------------------------------------

def check_states(request):
    try:
        call = json.loads(request.body or b"{}")
    except ValueError:
        return None
    limits = {
        "SendTaskSuccess": ("output", MAX_STATE_PAYLOAD_BYTES, True),
        "StartExecution": ("input", MAX_STATE_PAYLOAD_BYTES, True),
        "SendTaskFailure": ("cause", MAX_TASK_FAILURE_CAUSE, False),
    }
    checks = [limits[request.target]] if request.target in limits else []
    if request.target == "SendTaskFailure":
        checks.append(("error", MAX_TASK_FAILURE_ERROR, False))
    for field, limit, in_bytes in checks:
        value = call.get(field) or ""
        length = len(value.encode()) if in_bytes else len(value)
        if length > limit:
            raise json_refusal("ValidationException",
                               f"1 validation error detected: Value at '{field}' failed to "
                               f"satisfy constraint: Member must have length less than or "
                               f"equal to {limit}")
    return None
