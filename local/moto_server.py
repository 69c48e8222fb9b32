"""Runs moto's server (S3, DynamoDB, Step Functions) on a loopback port.

Usage: python -m local.moto_server PORT

The server exits when the process that started it dies, so a test run that is killed
never leaves a server behind. Where moto differs from AWS in a way this project
depends on, the difference is closed here, each with the reason beside it.
"""

import copy
import hashlib
import os
import sys
import threading
import time
import types
import uuid

from werkzeug.serving import make_server

from moto.core.config import default_user_config
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models import dynamo_type
from moto.dynamodb.models.table import Table
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.stepfunctions.parser.api import (
    ActivityDoesNotExist,
    ActivityTimedOutEventDetails,
    ExecutionStatus,
    HistoryEventType,
)
from moto.core.exceptions import AWSError
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import FailureEvent
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (
    StatesErrorName,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
    StatesErrorNameType,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_activitiy import (
    StateTaskActivity,
)
from moto.stepfunctions.parser.asl.eval.callback.callback import (
    ActivityCallbackEndpoint,
    CallbackPoolManager,
    HeartbeatTimeoutError,
)
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
from moto.stepfunctions.parser.backend import activity as parser_activity
from moto.stepfunctions.parser.backend.activity import ActivityTask
from moto.stepfunctions.parser import models as parser_models
from moto.core.responses import ActionResult, EmptyResult
from moto.stepfunctions.responses import StepFunctionResponse
import moto.dynamodb.models as dynamodb_models
from moto.s3.models import FakeKey
from moto.s3.responses import S3Response

from . import strict

# The longest GetActivityTask waits for a task, as on AWS; tests may shorten it.
ACTIVITY_POLL_SECONDS = float(os.environ.get("MOTO_ACTIVITY_POLL_SECONDS", "60"))


def snapshot_rows_not_tables() -> None:
    """TransactWriteItems: keep rollback, drop the cost.

    moto backs up a transaction by deep-copying the whole table once per item of the
    transaction, so a 25-item transaction on a 5,000-row table copies 125,000 rows;
    the status table takes one transaction per 24 files, which made a few thousand
    files take minutes. Here the table copy is skipped and only the rows the
    transaction names are saved and, if it fails, put back: the same all-or-nothing
    result as AWS.
    """
    original = DynamoDBBackend.transact_write_items

    def no_table_copy(value, memo=None):
        return value if isinstance(value, Table) else copy.deepcopy(value, memo)

    # Only the transaction code reads this module's `copy`; everything else keeps its own.
    dynamodb_models.copy = types.SimpleNamespace(deepcopy=no_table_copy, copy=copy.copy)

    def row_address(backend, op):
        table = backend.get_table(op["TableName"])
        key = op["Key"] if "Key" in op else op["Item"]
        hash_value = dynamo_type.DynamoType(key[table.hash_key_attr])
        range_value = (
            dynamo_type.DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
        )
        return table, hash_value, range_value

    def transact_write_items(self, transact_items):
        saved = []
        for item in transact_items:
            _, op = next(iter(item.items()))
            try:
                table, hash_value, range_value = row_address(self, op)
            except Exception:  # moto's own validation reports it
                continue
            rows = table.items.get(hash_value, {}) if range_value is not None else table.items
            key = range_value if range_value is not None else hash_value
            saved.append((table, hash_value, range_value, copy.deepcopy(rows.get(key))))
        try:
            return original(self, transact_items)
        except Exception:
            for table, hash_value, range_value, row in reversed(saved):
                if range_value is None:
                    rows, key = table.items, hash_value
                else:
                    rows, key = table.items[hash_value], range_value
                if row is None:
                    rows.pop(key, None)
                else:
                    rows[key] = row
            raise

    DynamoDBBackend.transact_write_items = transact_write_items


def isolate_dynamodb_requests() -> None:
    """One DynamoDB request at a time, as AWS's transactions are isolated.

    moto's threaded server runs requests concurrently, and a transaction applies its
    items one by one and, on a failed condition, puts the rows back as they were when
    it began: a concurrent write in between is lost, and a concurrent read can see half
    a transaction. Two deliveries of one slave batch racing each other hit exactly
    that. Every table read and write is serialized here.
    """
    lock = threading.RLock()

    def serialized(method):
        def call(self, *args, **kwargs):
            with lock:
                return method(self, *args, **kwargs)

        return call

    for name in (
        "get_item", "put_item", "update_item", "delete_item", "query", "scan",
        "batch_get_item", "batch_write_item", "transact_write_items", "transact_get_items",
    ):
        setattr(DynamoDBBackend, name, serialized(getattr(DynamoDBBackend, name)))


class QueuedActivity(parser_activity.Activity):
    """An activity's task queue that a worker can wait on, as GetActivityTask does."""

    def __init__(self, arn, name):
        super().__init__(arn=arn, name=name)
        self.ready = threading.Condition()

    def add_task(self, task):
        with self.ready:
            super().add_task(task)
            self.ready.notify()

    def wait_for_task(self, seconds):
        with self.ready:
            self.ready.wait_for(lambda: self._tasks, timeout=seconds)
            return self._tasks.popleft() if self._tasks else None


# One queue per activity ARN, shared by every execution and every worker.
ACTIVITY_QUEUES: dict = {}
ACTIVITY_QUEUES_LOCK = threading.Lock()


def activity_queue(arn):
    with ACTIVITY_QUEUES_LOCK:
        if arn not in ACTIVITY_QUEUES:
            ACTIVITY_QUEUES[arn] = QueuedActivity(arn=arn, name=arn.rsplit(":", 1)[-1])
        return ACTIVITY_QUEUES[arn]


class LiveActivities(dict):
    """The activities an execution can schedule tasks on: those that exist now.

    moto hands each execution an empty activity store, so every Task on an activity
    fails with States.Runtime; this store looks activities up in the backend instead.
    """

    def __init__(self, account_id, region_name):
        super().__init__()
        self.account_id = account_id
        self.region_name = region_name

    def get(self, arn, default=None):
        backend = parser_models.stepfunctions_parser_backends[self.account_id][self.region_name]
        return activity_queue(arn) if arn in backend.activities else default


def schedule_activity_tasks() -> None:
    """Executions schedule activity tasks on the shared queues."""
    original_init = parser_models.Execution.__init__

    def init(self, *args, **kwargs):
        kwargs["activity_store"] = LiveActivities(kwargs["account_id"], kwargs["region_name"])
        original_init(self, *args, **kwargs)

    parser_models.Execution.__init__ = init


def serve_get_activity_task() -> None:
    """GetActivityTask: not implemented by moto; long-polls the activity's queue."""

    def waiting_endpoint(backend, token):
        for execution in backend._get_executions(ExecutionStatus.RUNNING):
            endpoint = execution.exec_worker.env.callback_pool_manager.get(token)
            if isinstance(endpoint, ActivityCallbackEndpoint):
                return endpoint
        return None

    def get_activity_task(self):
        arn = self._get_param("activityArn")
        backend = self.stepfunction_backend
        backend.describe_activity(arn)  # ActivityDoesNotExist as on AWS
        deadline = time.monotonic() + ACTIVITY_POLL_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            task = activity_queue(arn).wait_for_task(left)
            if task is None:
                break
            # A task whose execution has ended is dropped, not handed out.
            endpoint = waiting_endpoint(backend, task.task_token)
            if endpoint is not None:
                # The execution records ActivityStarted and only then waits for the outcome.
                endpoint.notify_activity_task_start(worker_name=self._get_param("workerName"))
                return ActionResult({"taskToken": task.task_token, "input": task.task_input})
        return ActionResult({})

    StepFunctionResponse.get_activity_task = get_activity_task


def keep_task_failure_cause() -> None:
    """SendTaskFailure: moto drops `cause`, which carries the failed files here."""

    def send_task_failure(self):
        self.stepfunction_backend.send_task_failure(
            self._get_param("taskToken"),
            error=self._get_param("error"),
            cause=self._get_param("cause"),
        )
        return EmptyResult()

    StepFunctionResponse.send_task_failure = send_task_failure


def name_list_parts_result() -> None:
    """ListParts: S3 answers `<ListPartsResult>`; moto's `<ListPartsResponse>` is not
    read by the Rust SDK, which checks the root element."""
    original = S3Response.list_parts

    def list_parts(self):
        status, headers, body = original(self)
        if isinstance(body, bytes):
            body = body.replace(b"ListPartsResponse", b"ListPartsResult")
        elif isinstance(body, str):
            body = body.replace("ListPartsResponse", "ListPartsResult")
        return status, headers, body

    S3Response.list_parts = list_parts


def kms_etags_are_not_md5s() -> None:
    """An object S3 encrypts with SSE-KMS (or DSSE-KMS) has an ETag that is not the MD5 of
    its bytes, and differs from write to write; moto gives every object its MD5. Code that
    takes a matching ETag for a copy that kept its bytes and its encryption would pass
    here and not on AWS. The stand-in depends on the write (bucket, key, time, KMS key),
    so the same object answers the same ETag every time it is read."""
    original = FakeKey.etag

    def etag(self):
        plain = original.fget(self)
        if getattr(self, "encryption", None) in ("aws:kms", "aws:kms:dsse") and "-" not in plain:
            write = "|".join(str(getattr(self, name, "")) for name in
                             ("bucket_name", "name", "last_modified", "kms_key_id"))
            digest = hashlib.md5(f"sse-kms|{write}|{plain}".encode(), usedforsecurity=False)
            return f'"{digest.hexdigest()}"'
        return plain

    FakeKey.etag = property(etag)


def reverse_history_on_request() -> None:
    """GetExecutionHistory: moto ignores `reverseOrder`, which asks for the newest events
    first (status reads the newest activity event that way)."""

    def get_execution_history(self):
        history = self.stepfunction_backend.get_execution_history(self._get_param("executionArn"))
        if self._get_param("reverseOrder"):
            history = dict(history, events=list(reversed(history["events"])))
        return ActionResult(history)

    StepFunctionResponse.get_execution_history = get_execution_history


def name_unnamed_executions() -> None:
    """StartExecution without a name: AWS makes one up; moto's ARN ends in `:None`."""
    backend = parser_models.StepFunctionsParserBackend
    original = backend.start_execution

    def start_execution(self, state_machine_arn, name=None, *args, **kwargs):
        return original(self, state_machine_arn, name or str(uuid.uuid4()), *args, **kwargs)

    backend.start_execution = start_execution


class TaskTokens:
    """Which activity task tokens Step Functions still takes an answer for.

    On AWS a token answers TaskTimedOut once its task is closed: answered, timed out,
    its heartbeat missed, or its execution ended. moto keeps a closed task's endpoint
    while its execution runs, so a second SendTaskSuccess is accepted and a token whose
    heartbeat lapsed still takes one (and drops it); after its execution ends, moto
    answers InvalidToken. Here every token is open from when its task is scheduled
    until one of those happens, and closed after.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.open = set()
        self.closed = set()

    def opened(self, token):
        with self.lock:
            self.open.add(token)

    def close(self, token):
        with self.lock:
            self.open.discard(token)
            self.closed.add(token)

    def take_answer(self, token):
        """Raises TaskTimedOut for a closed token; returns whether the token is open
        (one this server scheduled), to be closed once its answer is taken."""
        with self.lock:
            if token in self.closed:
                raise TaskTimedOut()
            return token in self.open

    def check_open(self, token):
        with self.lock:
            if token in self.closed:
                raise TaskTimedOut()


TASK_TOKENS = TaskTokens()


class TaskTimedOut(AWSError):
    """What Step Functions answers for the token of a closed task."""

    TYPE = "TaskTimedOut"

    def __init__(self):
        super().__init__("Task Timed Out: 'Provided task does not exist anymore'")


def queue_tasks_once_answerable() -> None:
    """An activity task is queued only once its execution can take the answer.

    moto queues the task first and registers the execution's endpoint for it after, so
    a worker already waiting in GetActivityTask could take the task in between, find
    no endpoint, and drop it as belonging to an ended execution: the execution then
    waits for a task nobody holds. Here the endpoint is registered and the token opened
    (see TaskTokens) before the task is queued.
    """

    def add_activity_task(self, callback_id, activity_arn, activity_input):
        if callback_id in self._pool:
            raise ValueError("Duplicate callback token id value.")
        activity = self._activity_store.get(activity_arn)
        if activity is None:
            # moto raises it without a message, which its error class refuses; the
            # execution fails with States.Runtime either way.
            raise ActivityDoesNotExist(f"Activity Does Not Exist: {activity_arn}")
        endpoint = ActivityCallbackEndpoint(callback_id=callback_id, activity_input=activity_input)
        self._pool[callback_id] = endpoint
        TASK_TOKENS.opened(callback_id)
        activity.add_task(ActivityTask(task_token=callback_id, task_input=activity_input))
        return endpoint

    CallbackPoolManager.add_activity_task = add_activity_task


def close_answered_tasks() -> None:
    """A task token takes one answer, as on AWS: see TaskTokens."""
    eval_execution = StateTaskActivity._eval_execution

    def run_task(self, env):
        try:
            return eval_execution(self, env)
        finally:
            token = env.states.context_object.context_object_data.get("Task", {}).get("Token")
            if token:
                TASK_TOKENS.close(token)

    StateTaskActivity._eval_execution = run_task

    backend = parser_models.StepFunctionsParserBackend
    for name in ("send_task_success", "send_task_failure"):
        original = getattr(backend, name)

        def answer(self, task_token, *args, _original=original, **kwargs):
            ours = TASK_TOKENS.take_answer(task_token)
            result = _original(self, task_token, *args, **kwargs)
            if ours:
                TASK_TOKENS.close(task_token)
            return result

        setattr(backend, name, answer)
    heartbeat = backend.send_task_heartbeat

    def send_task_heartbeat(self, task_token):
        TASK_TOKENS.check_open(task_token)
        return heartbeat(self, task_token)

    backend.send_task_heartbeat = send_task_heartbeat


def name_heartbeat_timeouts() -> None:
    """A missed activity heartbeat is States.HeartbeatTimeout, which a Retry can match;
    moto reports it as States.Timeout, the error of the task's whole timeout."""
    from_error = StateTaskActivity._from_error

    def named(self, env, ex):
        if isinstance(ex, HeartbeatTimeoutError):
            error = StatesErrorName(typ=StatesErrorNameType.StatesHeartbeatTimeout)
            return FailureEvent(
                env=env,
                error_name=error,
                event_type=HistoryEventType.ActivityTimedOut,
                event_details=EventDetails(
                    activityTimedOutEventDetails=ActivityTimedOutEventDetails(
                        error=error.error_name,
                        cause="The activity task's worker sent no heartbeat in time.",
                    )
                ),
            )
        return from_error(self, env, ex)

    StateTaskActivity._from_error = named


def serve(port):
    """moto's application behind the strict layer (strict.py) unless LOCAL_AWS_STRICT=0."""
    app = DomainDispatcherApplication(create_backend_app)
    if os.environ.get("LOCAL_AWS_STRICT", "1") != "0":
        app = strict.Strict(app)
    server = make_server("127.0.0.1", port, app, True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    port = int(sys.argv[1])
    parent = os.getppid()
    snapshot_rows_not_tables()
    isolate_dynamodb_requests()
    # Step Functions runs executions only when this is set before any resource exists.
    default_user_config["stepfunctions"]["execute_state_machine"] = True
    schedule_activity_tasks()
    serve_get_activity_task()
    keep_task_failure_cause()
    name_unnamed_executions()
    name_list_parts_result()
    kms_etags_are_not_md5s()
    reverse_history_on_request()
    queue_tasks_once_answerable()
    close_answered_tasks()
    name_heartbeat_timeouts()
    server = serve(port)
    print(f"moto listening on 127.0.0.1:{port}", flush=True)
    try:
        while os.getppid() == parent:
            time.sleep(0.5)
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
