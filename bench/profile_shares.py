"""Summarize a py-spy profile of the broker's gunicorn workers by share of samples.

Record one while step_cycle.py runs, then summarize it::

    py-spy record --pid MASTER_PID --subprocesses --nonblocking --rate 50 \\
        --duration 20 --format raw -o profile.txt
    .venv/bin/python bench/profile_shares.py profile.txt

The input is py-spy's raw format: one line per distinct stack, frames joined
by ``;`` from the root, then a space and the sample count. Without ``--native``
py-spy charges the time spent inside SQLite's C code, a wait for its write
lock included, to the Python line that called ``execute``. Add ``--gil`` to
py-spy to sample only the thread that holds the GIL, which leaves out waits.
"""

import argparse
import re
from collections import Counter

#: The view method that marks a request kind, by the name py-spy prints.
VIEWS = {
    "WorkerKeepAlive.post": "keep_alive",
    "Step.get": "get_step",
    "Step.post": "report",
    "Dispatch.post": "dispatch",
    "Instances.get": "list_instances",
    "InstanceById.get": "get_instance",
    "WorkerRegister.post": "register",
}
#: The gthread worker method that runs one request in a pool thread.
REQUEST_FRAME = "ThreadWorker.handle"
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]*)(:\d+)?\)$")


def parse_stacks(path):
    """Return ``(frames, count)`` per line, root frame first, process ids dropped."""
    stacks = []
    with open(path) as lines:
        for line in lines:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = [f for f in stack.split(";") if not f.startswith("process ")]
            stacks.append((frames, int(count)))
    return stacks


def frame_parts(frame):
    """Return ``(function, file)`` of one py-spy frame."""
    match = FRAME.match(frame)
    if match is None:
        return frame, ""
    return match["function"], match["file"]


def request_kind(frames):
    """Return the request kind a stack belongs to, from the view method in it."""
    for frame in frames:
        kind = VIEWS.get(frame_parts(frame)[0])
        if kind is not None:
            return kind
    return "not inside a view method (HTTP, middleware, routing, arguments)"


def in_request(frames):
    """Tell whether a stack is a gthread pool thread handling a request."""
    return any(frame_parts(f)[0] == REQUEST_FRAME for f in frames)


def package_of(file):
    """Return the top folder of a frame's file, or the module for the stdlib."""
    head = file.split("/")[0]
    return head.removesuffix(".py") or "?"


def shares(stacks, top):
    """Return the request samples' count and tables of ``(share, name)`` rows.

    Only samples of threads handling a request count: py-spy also samples
    gthread's pool threads while they wait for work, and the main thread
    while it waits in epoll.
    """
    requests = [(frames, count) for frames, count in stacks if in_request(frames)]
    total = sum(count for _, count in requests)
    kinds, inclusive, own, own_package = Counter(), Counter(), Counter(), Counter()
    for frames, count in requests:
        kinds[request_kind(frames)] += count
        for function, file in {frame_parts(f) for f in frames}:
            inclusive[f"{function} ({file})"] += count
        # The innermost frame keeps its line number, so time in BEGIN and in
        # COMMIT of the same function shows up as separate rows.
        own[frames[-1]] += count
        own_package[package_of(frame_parts(frames[-1])[1])] += count

    def table(counter, limit=None):
        return [(n / total, name) for name, n in counter.most_common(limit)]

    return total, [
        ("by request kind", table(kinds)),
        ("self time by package of the innermost frame", table(own_package, top)),
        ("self time by innermost frame", table(own, top)),
        ("inclusive time by function", table(inclusive, top)),
    ]


def main():
    """Print the share tables of a py-spy raw profile."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", help="file written by py-spy record --format raw")
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    args = parser.parse_args()
    stacks = parse_stacks(args.profile)
    total, tables = shares(stacks, args.top)
    everything = sum(count for _, count in stacks)
    print(f"{total} of {everything} samples were in threads handling a request")
    for title, rows in tables:
        print(f"\n{title}")
        for share, name in rows:
            print(f"{share:7.1%}  {name}")


if __name__ == "__main__":
    main()
