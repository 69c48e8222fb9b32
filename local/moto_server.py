"""Runs moto's server (S3, DynamoDB, Step Functions) on a loopback port.

Usage: python local/moto_server.py PORT

The server exits when the process that started it dies, so a test run that is killed
never leaves a server behind. Where moto differs from AWS in a way this project
depends on, the difference is closed here, each with the reason beside it.
"""

import copy
import os
import sys
import time
import types

from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models import dynamo_type
from moto.dynamodb.models.table import Table
from moto.server import ThreadedMotoServer
import moto.dynamodb.models as dynamodb_models


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


def main() -> None:
    port = int(sys.argv[1])
    parent = os.getppid()
    snapshot_rows_not_tables()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print(f"moto listening on 127.0.0.1:{port}", flush=True)
    try:
        while os.getppid() == parent:
            time.sleep(0.5)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
