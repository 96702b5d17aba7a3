"""Profile the broker's request handlers in one thread with pyinstrument.

Runs the app through Flask's test client on a temporary SQLite file, so
gunicorn, the network and lock waits between threads are left out. It
dispatches ``--instances`` diamonds (profiled on their own), then profiles
one worker looping keep-alive, take a step and report until none is left.
Needs ``.venv/bin/pip install pyinstrument``. The broker's log lines go to
stderr, so send stderr to /dev/null to read the profile.
"""

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from pyinstrument import Profiler
from shapes import INPUTS, build_workflow, success_report

from fuseline_broker import create_app


def run_steps(client, workflow, worker_id):
    """Run every queued step as a protocol worker does; return how many ran."""
    query = f"?worker_id={worker_id}"
    ran = 0
    while True:
        client.post(
            "/worker/keep-alive" + query, data=b"", content_type="application/json"
        )
        reply = client.get("/workflow/step" + query)
        if reply.status_code == 204:
            return ran
        report = success_report(reply.get_json(), workflow)
        client.post("/workflow/step" + query, json=report)
        ran += 1


#: Functions whose inclusive time marks a phase of a request, outermost first.
PHASES = (
    ("Flask.__call__", "the WSGI app, so everything but the test client"),
    ("PathTokenMiddleware.__call__", "auth middleware and all inside it"),
    ("Flask.preprocess_request", "before_request hooks"),
    ("BrokerParser.parse", "webargs parsing of query and body (marshmallow)"),
    ("Dispatch.post", "dispatch view"),
    ("WorkerKeepAlive.post", "keep-alive view"),
    ("Step.get", "take-a-step view"),
    ("Step.post", "report view"),
    ("SQLiteStorage._write", "transaction enter and exit: BEGIN IMMEDIATE, COMMIT"),
    ("Connection.execute", "every SQLite statement, inside any phase"),
    ("Logger.info", "the broker's log lines"),
    ("json_response", "response serialization"),
    ("Flask.finalize_request", "after_request hooks and response finishing"),
)


def phase_table(inclusive):
    """Return the share of each phase function, summed over every file."""
    by_function = Counter()
    for name, seconds in inclusive.items():
        by_function[name.split(" (")[0]] += seconds
    return [
        (f"{function}: {meaning}", by_function[function])
        for function, meaning in PHASES
    ]


def frame_name(frame):
    """Return ``Class.function (file)`` of a pyinstrument frame."""
    function = frame.function
    if frame.class_name:
        function = f"{frame.class_name}.{function}"
    return f"{function} ({frame.file_path_short.removeprefix('../')})"


def time_tables(root, top):
    """Return inclusive time per function and self time per package, in seconds."""
    inclusive, own_package = Counter(), Counter()

    def visit(frame, path):
        name = frame_name(frame)
        if name not in path:
            # A recursive call is already counted in its outermost frame.
            inclusive[name] += frame.time
        own = frame.time - sum(child.time for child in frame.children)
        package = (frame.file_path_short or "?").removeprefix("../").split("/")[0]
        own_package[package.removesuffix(".py")] += own
        for child in frame.children:
            visit(child, path | {name})

    visit(root, frozenset())
    return [
        ("phases (inclusive)", phase_table(inclusive)),
        ("self time by package", own_package.most_common(top)),
        ("inclusive time by function", inclusive.most_common(top)),
    ]


def print_profile(title, profiler, top):
    """Print a profile's share tables."""
    root = profiler.last_session.root_frame()
    print(f"\n# {title}: {root.time:.2f} s profiled")
    for heading, rows in time_tables(root, top):
        print(f"\n{heading}")
        for name, seconds in rows:
            print(f"{seconds / root.time:7.1%}  {name}")


def main():
    """Profile dispatches, then the step cycle, and print both profiles."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument(
        "--interval", type=float, default=0.001, help="sampling interval in seconds"
    )
    parser.add_argument("--top", type=int, default=30, help="rows per table")
    args = parser.parse_args()
    workflow = build_workflow("diamond", 0)
    with tempfile.TemporaryDirectory(prefix="fuseline-profile-") as folder:
        database = Path(folder) / "broker.sqlite3"
        app = create_app(
            {"FUSELINE_BROKER_DATABASE": str(database)}, instance_path=folder
        )
        client = app.test_client()
        worker_id = client.post("/worker/register", json=[workflow]).get_json()

        dispatching = Profiler(interval=args.interval)
        with dispatching:
            for _ in range(args.instances):
                client.post(
                    "/workflow/dispatch", json={"workflow": workflow, "inputs": INPUTS}
                )
        cycling = Profiler(interval=args.interval)
        with cycling:
            ran = run_steps(client, workflow, worker_id)

    print_profile(f"{args.instances} dispatches", dispatching, args.top)
    print_profile(f"{ran} steps (keep-alive, take, report)", cycling, args.top)


if __name__ == "__main__":
    main()
