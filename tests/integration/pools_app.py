"""Worker processes of the standard library, for test_pools.py. It knows nothing
about pickleguard.

    python pools_app.py KIND START_METHOD PAYLOAD_HEX [LABEL]

KIND is how the work reaches other processes:

- queue: a consumer Process reads tasks from a multiprocessing.Queue and puts its
  results (or the exception it raised) on another;
- simplequeue: the same through multiprocessing.SimpleQueue;
- pipe: the same through Queues, and the consumer is also sent one end of a
  multiprocessing.Pipe through the task queue (multiprocessing's resource sharer
  hands it over) and says it is ready on it;
- manager: the same through the queues of a multiprocessing Manager, which serves
  them from its own process;
- pool: multiprocessing.Pool.map;
- executor: concurrent.futures.ProcessPoolExecutor.map.

Each of four tasks carries PAYLOAD as bytes, and the worker unpickles it (`decode`):
user code loading data it received, not the transport's own message. Each task also
carries a text made from LABEL (default "recorded"), which comes back with its
result: so a run can send the transport other messages than the recorded run's.
The app prints the values, or `refused: ...` for an error named NoPickleError
(status 1 then), and the pids of itself and of its child processes on lines
starting with `pid`.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.connection
import multiprocessing.queues
import os
import pickle
import sys
from typing import Any, List, Tuple

TASKS = 4


def decode(data: bytes) -> Any:
    """Runs in a worker process."""
    return pickle.loads(data)


def work(task: Tuple[int, bytes, str]) -> Tuple[int, Any]:
    number, data, label = task
    return number, [decode(data), label]


def consume(tasks: Any, results: Any) -> None:
    """A consumer process: one result, or the error, for each task until None. A
    connection sent among the tasks is told the consumer is ready."""
    for task in iter(tasks.get, None):
        if isinstance(task, multiprocessing.connection.Connection):
            task.send_bytes(b"ready")
            task.close()
            continue
        try:
            results.put(work(task))
        except Exception as e:
            results.put((task[0], e))


def through_queues(
    context: Any, queue: Any, tasks: List[Tuple[int, bytes, str]], pipe: bool = False
) -> List[Any]:
    todo, done = queue(), queue()
    consumer = context.Process(target=consume, args=(todo, done))
    consumer.start()
    print_children()
    if pipe:
        reader, writer = context.Pipe(duplex=False)
        todo.put(writer)
        if not reader.poll(120) or reader.recv_bytes() != b"ready":
            raise SystemExit("the consumer did not answer on the pipe")
    for task in tasks:
        todo.put(task)
    todo.put(None)
    # SimpleQueue.get has no timeout; the tests' harness kills a hung run.
    simple = isinstance(done, multiprocessing.queues.SimpleQueue)
    get = done.get if simple else lambda: done.get(timeout=120)
    results = [get() for _ in tasks]
    consumer.join(120)
    return results


def print_children() -> None:
    children = sorted(p.pid for p in multiprocessing.active_children() if p.pid is not None)
    print("pid children " + " ".join(map(str, children)))


def main() -> int:
    kind, method, payload = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
    label = sys.argv[4] if len(sys.argv) > 4 else "recorded"
    context = multiprocessing.get_context(method)
    tasks = [(n, payload, f"{label}-{n}") for n in range(TASKS)]
    print(f"pid parent {os.getpid()}")
    if kind == "queue":
        results = through_queues(context, context.Queue, tasks)
    elif kind == "simplequeue":
        results = through_queues(context, context.SimpleQueue, tasks)
    elif kind == "pipe":
        results = through_queues(context, context.Queue, tasks, pipe=True)
    elif kind == "manager":
        with context.Manager() as manager:
            results = through_queues(context, manager.Queue, tasks)
    elif kind == "pool":
        with context.Pool(2) as pool:
            try:
                results = pool.map(work, tasks)
            except Exception as e:
                results = [(0, e)]
            print_children()
    elif kind == "executor":
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as executor:
            try:
                results = list(executor.map(work, tasks))
            except Exception as e:
                results = [(0, e)]
            print_children()
    else:
        raise SystemExit(f"unknown kind {kind}")
    errors = [value for _, value in results if isinstance(value, BaseException)]
    if errors:
        error = errors[0]
        if type(error).__name__ != "NoPickleError":
            raise error
        print(
            f"{kind}/{method}: refused: {type(error).__module__}.{type(error).__name__}"
            f" code={error.code} caller={error.caller} sha256={error.sha256}"  # type: ignore[attr-defined]
        )
        return 1
    print(f"{kind}/{method}: {[value for _, value in sorted(results)]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
