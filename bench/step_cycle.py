"""Measure the broker's step cycle: dispatch runs, then keep-alive, take, report.

Run ``.venv/bin/python bench/step_cycle.py --help`` from the repository root.
It prints one JSON line on stdout and its progress on stderr. Every server it
starts binds 127.0.0.1 and is stopped before it exits.
"""

import argparse
import ipaddress
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import clients
import cycle
import history
import purge
from servers import REPO_ROOT, GunicornServer, MemorySampler, gunicorn_settings
from shapes import SHAPES, build_workflow, renamed_workflow

log = logging.getLogger("step_cycle")

PRODUCT_PATHS = ("fuseline_broker", "wsgi.py", "gunicorn.conf.py")


def parse_args(argv):
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=(
            "Dispatch N workflow runs to a broker, run every step with C worker "
            "processes that speak the fuseline wire protocol, then send the same "
            "number of requests to a trivial Flask app on the same gunicorn "
            "settings. Prints one JSON line."
        )
    )
    _add_load_options(parser)
    _add_history_options(parser)
    args = parser.parse_args(argv)
    for name in ("instances", "workers", "dispatch_clients", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.history_steps < 0 or args.history_queued < 0:
        parser.error("--history-steps and --history-queued must not be negative")
    if args.purge_during and (args.url or args.history_steps < 1):
        parser.error(
            "--purge-during needs --history-steps of at least 1 and no --url, "
            "because it runs the purge command on the SQLite file of a broker "
            "that the benchmark started"
        )
    if args.url:
        try:
            loopback_target(args.url)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def _add_load_options(parser):
    parser.add_argument(
        "--url",
        help="base URL of a running broker on a loopback address (default: start "
        "gunicorn wsgi:app on a temporary SQLite file)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=500,
        help="workflow instances to dispatch per cycle",
    )
    parser.add_argument("--shape", choices=SHAPES, default="diamond")
    parser.add_argument(
        "--k",
        type=int,
        default=4,
        help="steps of a chain, or parallel steps of a fan-out between its source "
        "and sink steps (ignored for the diamond)",
    )
    parser.add_argument(
        "--workers", type=int, default=8, help="worker processes (and baseline clients)"
    )
    parser.add_argument(
        "--dispatch-clients",
        type=int,
        default=4,
        help="client processes that send the dispatches",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="cycles per server; each round also runs a baseline burst, and with "
        "history the two brokers alternate which goes first",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds each phase may take before the benchmark fails",
    )


def _add_history_options(parser):
    parser.add_argument(
        "--history-steps",
        type=int,
        default=0,
        help="finished steps to pre-fill; the run then also measures a broker "
        "without them and prints the ratios",
    )
    parser.add_argument(
        "--history-queued",
        type=int,
        default=0,
        help="queued runs of a workflow that no benchmark worker registered, "
        "pre-filled with the history",
    )
    parser.add_argument(
        "--purge-during",
        action="store_true",
        help="after the rounds, measure one more cycle on the broker with history, "
        "then one while 'flask --app wsgi broker purge --older-than 0' deletes "
        "every instance finished before its step phase, and print their ratios "
        "(needs --history-steps)",
    )


def loopback_target(url):
    """Return the clients.Target of a broker URL, or raise ValueError off loopback."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--url must be an http:// URL with a host, received {url!r}")
    host = parts.hostname
    if host != "localhost" and not _is_loopback_address(host):
        raise ValueError(f"--url must name a loopback address, received {host!r}")
    return clients.Target(host, parts.port or 80, parts.path.rstrip("/"))


def _is_loopback_address(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Server:
    """A server under test: its address and, if the benchmark started it, gunicorn."""

    target: clients.Target
    gunicorn: GunicornServer | None = None
    sampler: MemorySampler | None = None
    database: Path | None = None
    cycles: list = field(default_factory=list)
    bursts: list = field(default_factory=list)

    def stop(self):
        """Stop sampling memory and stop gunicorn, if the benchmark started it."""
        if self.sampler is not None:
            self.sampler.stop()
        if self.gunicorn is not None:
            self.gunicorn.stop()

    @property
    def cpu_clock(self):
        """Return a callable giving gunicorn's CPU seconds, or None for --url."""
        return self.gunicorn.cpu_seconds if self.gunicorn else None

    def memory_mb(self):
        """Return the peak memory of each gunicorn worker, or None for --url."""
        return self.sampler.peak_mb() if self.sampler else None

    def log_tail(self, lines=30):
        """Return the last lines gunicorn logged."""
        if self.gunicorn is None or not self.gunicorn.log_path.exists():
            return ""
        text = self.gunicorn.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def tracebacks(self):
        """Return how many tracebacks gunicorn logged, or None for --url."""
        if self.gunicorn is None or not self.gunicorn.log_path.exists():
            return None
        return self.gunicorn.log_path.read_text(errors="replace").count("Traceback")


def start_server(app_spec, work_dir, name, database=None):
    """Start ``gunicorn APP`` from the repository root and sample its memory."""
    env = {"FUSELINE_BROKER_DATABASE": str(database)} if database else {}
    gunicorn = GunicornServer(app_spec, work_dir / f"{name}.log", env)
    server = Server(clients.Target("127.0.0.1", 0), gunicorn, database=database)
    gunicorn.start(gunicorn_settings()["workers"])
    server.target = clients.Target("127.0.0.1", gunicorn.port)
    server.sampler = MemorySampler(gunicorn).start()
    return server


# History


def register_history_worker(target, workflows):
    """Register a worker for the pre-filled runs and return its id."""
    connection = clients.TimedConnection(target)
    reply = connection.post_json("register", "/worker/register", workflows)
    connection.close()
    if reply.status != 200:
        raise RuntimeError(f"registration failed: {reply.status} {reply.body!r}")
    return json.loads(reply.body)


def prefill(server, workflow, args):
    """Pre-fill the history: into SQLite if this script started the broker."""
    backlog = renamed_workflow(workflow, workflow["workflow_id"] + "-backlog")
    started = time.monotonic()
    if server.gunicorn is not None:
        worker_id = register_history_worker(server.target, [workflow, backlog])
        counts = history.prefill(
            str(server.database),
            workflow,
            backlog,
            worker_id,
            args.history_steps,
            args.history_queued,
        )
        method = "sqlite: direct inserts of the rows SQLiteStorage writes"
    else:
        counts = prefill_http(server.target, workflow, backlog, args)
        method = "http: dispatched and run through the API"
    filled = {"method": method, **counts}
    filled["seconds"] = round(time.monotonic() - started, 1)
    log.info("history written: %s", filled)
    return filled


def prefill_http(target, workflow, backlog, args):
    """Build the history through the HTTP API: run finished runs, then queue more."""
    finished = args.history_steps // len(workflow["steps"])
    if finished:
        log.info("history: dispatching and running %d runs over HTTP", finished)
        running_floor = cycle.count_running(target)
        cycle.dispatch_runs(
            target, workflow, finished, args.dispatch_clients, args.timeout
        )
        cycle.run_steps(target, workflow, args.workers, running_floor, args.timeout)
    if args.history_queued:
        log.info("history: queueing %d runs over HTTP", args.history_queued)
        cycle.dispatch_runs(
            target, backlog, args.history_queued, args.dispatch_clients, args.timeout
        )
    return {
        "finished_instances": finished,
        "finished_steps": finished * len(workflow["steps"]),
        "queued_instances": args.history_queued,
    }


# Rounds


def run_round(number, broker, reference, baseline, workflow, args):
    """Measure one cycle per broker between two baseline bursts.

    The bursts send half the cycle's request volume each, before and after
    the broker cycles, so a slow spell of the shared machine weighs on both
    sides of the ceiling ratio. With a reference broker (no history) the
    two brokers alternate which goes first, for the same reason.
    """
    measured = [broker]
    if reference is not None and reference.gunicorn is not None:
        measured = [reference, broker] if number % 2 == 0 else [broker, reference]
    volume = 3 * args.instances * len(workflow["steps"])
    bursts = [measure_burst(baseline, volume // 2, args)]
    for server in measured:
        server.cycles.append(
            cycle.measure_cycle(server.target, workflow, args, server.cpu_clock)
        )
    bursts.append(measure_burst(baseline, volume - volume // 2, args))
    baseline.bursts.extend(bursts)

    broker_rates = cycle.cycle_rates(broker.cycles[-1])
    pooled = cycle.summarize_baselines(bursts)
    record = {"round": number + 1, **broker_rates, **ceilings(broker_rates, pooled)}
    if reference is not None:
        reference_rates = cycle.cycle_rates(reference.cycles[-1])
        record["without_history"] = reference_rates
        record["history_ratios"] = cycle.ratios(reference_rates, broker_rates)
    return record


def measure_burst(baseline, volume, args):
    """Send one burst to the baseline app."""
    return cycle.measure_baseline(
        baseline.target, volume, args.workers, args.timeout, baseline.cpu_clock
    )


def ceilings(rates, baseline):
    """Return the baseline figures and the broker's share of them.

    ``ceiling_ratio`` compares request rates. ``cpu_ceiling_ratio`` compares
    server CPU per request, which other load on the machine moves far less.
    """
    requests_per_second = baseline["baseline_requests_per_second"]
    cpu_per_request = baseline["baseline_server_cpu_ms_per_request"]
    cpu_per_step = rates["server_cpu_ms_per_step"]
    result = {
        "baseline_requests_per_second": requests_per_second,
        "baseline_server_cpu_ms_per_request": cpu_per_request,
        "ceiling_ratio": round(rates["steps_per_second"] * 3 / requests_per_second, 3),
        "cpu_ceiling_ratio": None,
    }
    if cpu_per_request and cpu_per_step:
        result["cpu_ceiling_ratio"] = round(cpu_per_request * 3 / cpu_per_step, 3)
    return result


def median_of(records, *keys):
    """Return the median over rounds of a nested value."""
    values = []
    for record in records:
        for key in keys:
            record = record[key]
        values.append(record)
    if None in values:
        return None
    return round(statistics.median(values), 3)


def start_brokers(args, work_dir, servers):
    """Return the broker to measure and the reference broker without history.

    Appends every server it starts to ``servers``. The reference is None
    without history, and it is the measured broker itself with ``--url``.
    """
    with_history = bool(args.history_steps or args.history_queued)
    if args.url:
        broker = Server(loopback_target(args.url))
        return broker, (broker if with_history else None)
    broker = start_server("wsgi:app", work_dir, "broker", work_dir / "broker.db")
    servers.append(broker)
    if not with_history:
        return broker, None
    reference = start_server(
        "wsgi:app", work_dir, "reference", work_dir / "reference.db"
    )
    servers.append(reference)
    return broker, reference


def add_history(broker, reference, workflow, args):
    """Pre-fill the broker's history and return the reference to compare with."""
    if reference is not broker:
        return reference, prefill(broker, workflow, args)
    # One broker only: its reference cycle runs before the pre-fill.
    first = cycle.measure_cycle(broker.target, workflow, args)
    filled = prefill(broker, workflow, args)
    return Server(broker.target, cycles=[first]), filled


def run_benchmark(args, workflow, work_dir):
    """Start or reach the servers, measure every round and return the output."""
    servers = []
    try:
        broker, reference = start_brokers(args, work_dir, servers)
        baseline = start_server("bench.baseline_app:app", work_dir, "baseline")
        servers.append(baseline)
        filled = None
        if reference is not None:
            reference, filled = add_history(broker, reference, workflow, args)
        rounds = [
            run_round(number, broker, reference, baseline, workflow, args)
            for number in range(args.rounds)
        ]
        purged = None
        if args.purge_during:
            purged = purge.measure_purge_round(broker, workflow, args, work_dir)
    except BaseException:
        for server in servers:
            log.error("tail of %s:\n%s", server.gunicorn.log_path, server.log_tail())
        raise
    finally:
        for server in servers:
            server.stop()
    output = compose_output(broker, reference, baseline, rounds, filled)
    if purged is not None:
        output["purge_during"] = purged
    return output


def compose_output(broker, reference, baseline, rounds, filled):
    """Return the benchmark's JSON fields, pooled over the rounds."""
    output = {
        **cycle.summarize_cycles(broker.cycles),
        "gunicorn_worker_memory_mb": broker.memory_mb(),
        "server_tracebacks": broker.tracebacks(),
        **cycle.summarize_baselines(baseline.bursts),
        "baseline_worker_memory_mb": baseline.memory_mb(),
        "ceiling_ratio": median_of(rounds, "ceiling_ratio"),
        "cpu_ceiling_ratio": median_of(rounds, "cpu_ceiling_ratio"),
        "per_round": rounds,
    }
    if reference is not None:
        output["history"] = filled
        output["history_ratios"] = {
            key: median_of(rounds, "history_ratios", key)
            for key in rounds[0]["history_ratios"]
        }
        output["without_history"] = {
            **cycle.summarize_cycles(reference.cycles),
            "gunicorn_worker_memory_mb": reference.memory_mb(),
            "server_tracebacks": reference.tracebacks(),
        }
    return output


def source_state():
    """Return the commit and the product files that differ from it."""

    def git(*command):
        return subprocess.run(
            ["git", *command], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout

    # Porcelain lines are two status letters, a space, then the path.
    changed = git("status", "--porcelain", "--", *PRODUCT_PATHS).splitlines()
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "product_files_changed": [line[3:] for line in changed],
    }


def main(argv=None):
    """Run the benchmark and print its JSON line."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr
    )
    args = parse_args(argv)
    workflow = build_workflow(args.shape, args.k)
    started = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fuseline-bench-") as folder:
        results = run_benchmark(args, workflow, Path(folder))
    output = {
        "shape": args.shape,
        "k": None if args.shape == "diamond" else args.k,
        "instances": args.instances,
        "workers": args.workers,
        "dispatch_clients": args.dispatch_clients,
        "rounds": args.rounds,
        "url": args.url,
        "gunicorn": gunicorn_settings(),
        "source": source_state(),
        **results,
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        "elapsed_seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(output), flush=True)


if __name__ == "__main__":
    main()
