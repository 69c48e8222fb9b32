"""Tests of the gaps moto_server.py closes in moto, on moto's own objects.

Run with: python -m unittest discover -s local -t .   (make test runs them)
"""

import unittest

from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackPoolManager

from . import moto_server


class WatchedActivity:
    """An activity that records what a worker woken by its new task would find."""

    def __init__(self, pool):
        self.pool = pool
        self.seen_by_worker = []

    def add_task(self, task):
        endpoint = self.pool.get(task.task_token)
        answerable = moto_server.TASK_TOKENS.take_answer(task.task_token)
        self.seen_by_worker.append((endpoint is not None, answerable))


class ActivityTaskTest(unittest.TestCase):
    def test_a_task_is_queued_only_once_its_execution_can_take_the_answer(self):
        # GIVEN an execution scheduling a task on an activity a worker is waiting on
        moto_server.queue_tasks_once_answerable()
        store = {}
        pool = CallbackPoolManager(activity_store=store)
        activity = WatchedActivity(pool)
        store["arn:aws:states:us-east-1:123456789012:activity:wait"] = activity

        # WHEN the task is queued
        endpoint = pool.add_activity_task(
            "token-1", "arn:aws:states:us-east-1:123456789012:activity:wait", "{}"
        )

        # THEN a worker woken at that moment finds the execution's endpoint and an
        # open token, so it hands the task out instead of dropping it
        self.assertEqual(activity.seen_by_worker, [(True, True)])
        self.assertIs(pool.get("token-1"), endpoint)

    def test_a_task_on_a_missing_activity_is_refused_and_nothing_is_registered(self):
        moto_server.queue_tasks_once_answerable()
        pool = CallbackPoolManager(activity_store={})
        with self.assertRaises(moto_server.ActivityDoesNotExist):
            pool.add_activity_task("token-2", "arn:aws:states:us-east-1:1:activity:gone", "{}")
        self.assertIsNone(pool.get("token-2"))
        self.assertFalse(moto_server.TASK_TOKENS.take_answer("token-2"), "no token opened")


if __name__ == "__main__":
    unittest.main()
