"""One measured cycle against a broker: dispatch runs, run their steps, check them.

Also the baseline burst against the trivial app, and the summaries that
pool several cycles of one server into the numbers the benchmark prints.
"""

import json
import logging
from collections import Counter
from dataclasses import dataclass, field

import clients
from shapes import INPUTS

log = logging.getLogger(__name__)

LATENCY_KINDS = ("keep_alive", "get_step", "report", "dispatch", "running_count")
BASELINE_KINDS = ("keep_alive", "get_step", "report")
CHECK_COUNTS = (
    "not_succeeded",
    "steps_with_several_assignments",
    "steps_never_assigned",
)


@dataclass
class Cycle:
    """Raw results of one cycle, with durations in seconds."""

    dispatches: int = 0
    dispatch_seconds: float = 0.0
    steps: int = 0
    expected_steps: int = 0
    step_seconds: float = 0.0
    #: Monotonic time (time.monotonic()) at which the step phase's barrier opened.
    step_started_at: float | None = None
    step_requests: int = 0
    handed_out_twice: int = 0
    stale_reports: int = 0
    workers_stopped_idle: bool = True
    dispatch_cpu_seconds: float | None = None
    step_cpu_seconds: float | None = None
    checked: dict = field(default_factory=dict)
    stats: clients.Stats = field(default_factory=clients.Stats)


def count_running(target):
    """Return how many instances the broker lists as RUNNING."""
    connection = clients.TimedConnection(target)
    count = clients.running_count(connection)
    connection.close()
    if count is None:
        raise RuntimeError(f"cannot count running instances: {connection.stats}")
    return count


def dispatch_runs(target, workflow, count, processes, timeout):
    """Dispatch ``count`` runs from several processes and return ids and timing."""
    body = json.dumps({"workflow": workflow, "inputs": INPUTS}).encode()
    shares = clients.split_evenly(count, processes)
    args = [(target, body, share) for share in shares if share]
    started, results = clients.run_phase(
        "dispatch", clients.dispatch_instances, args, timeout
    )
    seconds = max(r["finished_at"] for r in results) - started
    ids = [instance_id for r in results for instance_id in r["instance_ids"]]
    return {"instance_ids": ids, "seconds": seconds, "results": results}


def run_steps(target, workflow, workers, running_floor, timeout):
    """Run every queued step of ``workflow`` with protocol workers and time it.

    The phase lasts from the barrier to the last report any worker sent.
    """
    args = [(target, workflow, running_floor, timeout)] * workers
    started, results = clients.run_phase(
        "steps", clients.run_protocol_worker, args, timeout
    )
    reported = [r["last_report_at"] for r in results if r["last_report_at"]]
    handouts = Counter(tuple(h) for r in results for h in r["handouts"])
    return {
        "results": results,
        "started": started,
        "seconds": (max(reported) - started) if reported else 0.0,
        "handouts": sum(handouts.values()),
        "handed_out_twice": sum(n - 1 for n in handouts.values() if n > 1),
        "stale_reports": sum(r["stale_reports"] for r in results),
        "all_finished": all(r["finished"] for r in results),
    }


def check_runs(target, instance_ids, processes, timeout):
    """Read every dispatched instance back and count what is not as expected."""
    shares = clients.split_evenly(len(instance_ids), processes)
    args, start = [], 0
    for share in shares:
        if share:
            args.append((target, instance_ids[start : start + share]))
        start += share
    _, results = clients.run_phase("check", clients.check_instances, args, timeout)
    return {key: sum(r[key] for r in results) for key in CHECK_COUNTS}, results


def measure_cycle(target, workflow, args, cpu_clock=None, before_steps=None):
    """Dispatch, run and check ``args.instances`` runs of ``workflow``.

    ``cpu_clock`` returns the server's CPU seconds so far, when the
    benchmark started the server and can read them. ``before_steps``, if
    given, is called between the dispatch phase and the step phase.
    """
    # A pre-filled backlog stays RUNNING, so the workers stop at that count.
    running_floor = count_running(target)
    log.info("dispatching %d runs of %s", args.instances, workflow["workflow_id"])
    cpu_at_start = _read(cpu_clock)
    dispatched = dispatch_runs(
        target, workflow, args.instances, args.dispatch_clients, args.timeout
    )
    if before_steps is not None:
        before_steps()
    cpu_at_dispatched = _read(cpu_clock)
    steps = run_steps(target, workflow, args.workers, running_floor, args.timeout)
    cpu_at_stepped = _read(cpu_clock)
    ids = dispatched["instance_ids"]
    checked, check_results = check_runs(
        target, ids, args.dispatch_clients, args.timeout
    )
    step_stats = clients.merge_stats(steps["results"])
    return Cycle(
        dispatches=len(ids),
        dispatch_seconds=dispatched["seconds"],
        steps=steps["handouts"],
        expected_steps=len(ids) * len(workflow["steps"]),
        step_seconds=steps["seconds"],
        step_started_at=steps["started"],
        step_requests=measured_requests(step_stats),
        handed_out_twice=steps["handed_out_twice"],
        stale_reports=steps["stale_reports"],
        workers_stopped_idle=steps["all_finished"],
        dispatch_cpu_seconds=_difference(cpu_at_dispatched, cpu_at_start),
        step_cpu_seconds=_difference(cpu_at_stepped, cpu_at_dispatched),
        checked=checked,
        stats=clients.merge_stats(
            dispatched["results"] + steps["results"] + check_results
        ),
    )


def _read(cpu_clock):
    return cpu_clock() if cpu_clock else None


def _difference(end, start):
    return None if end is None or start is None else end - start


def _cpu_ms_per(cpu_seconds, count):
    """Return milliseconds of server CPU per item, or None when not measured."""
    if None in cpu_seconds or not count:
        return None
    return round(sum(cpu_seconds) * 1000 / count, 3)


def measured_requests(stats):
    """Return the requests sent after the barrier, so without registrations."""
    return sum(
        len(values) for kind, values in stats.latencies.items() if kind != "register"
    )


def summarize_cycles(cycles):
    """Pool several cycles of one server: rates over summed time, pooled latencies."""
    stats = clients.merge_stats([{"stats": c.stats.as_dict()} for c in cycles])
    dispatches = sum(c.dispatches for c in cycles)
    steps = sum(c.steps for c in cycles)
    return {
        "dispatches": dispatches,
        "dispatches_per_second": _rate(
            dispatches, sum(c.dispatch_seconds for c in cycles)
        ),
        "steps": steps,
        "expected_steps": sum(c.expected_steps for c in cycles),
        "steps_per_second": _rate(steps, sum(c.step_seconds for c in cycles)),
        "server_cpu_ms_per_dispatch": _cpu_ms_per(
            [c.dispatch_cpu_seconds for c in cycles], dispatches
        ),
        "server_cpu_ms_per_step": _cpu_ms_per(
            [c.step_cpu_seconds for c in cycles], steps
        ),
        "latency_ms": clients.latency_summary(stats, LATENCY_KINDS),
        "status_5xx": stats.status_5xx,
        "status_other_non_2xx": stats.status_other_non_2xx,
        "database_locked_errors": stats.database_locked_errors,
        "steps_handed_out_twice": sum(c.handed_out_twice for c in cycles),
        **{key: sum(c.checked[key] for c in cycles) for key in CHECK_COUNTS},
        "stale_reports": sum(c.stale_reports for c in cycles),
        "workers_stopped_idle": all(c.workers_stopped_idle for c in cycles),
        "reconnects": stats.reconnects,
        "error_samples": stats.error_samples,
    }


def cycle_rates(cycle):
    """Return the headline numbers of one cycle."""
    get_step = clients.latency_summary(cycle.stats, ("get_step",)).get("get_step")
    return {
        "steps_per_second": _rate(cycle.steps, cycle.step_seconds),
        "dispatches_per_second": _rate(cycle.dispatches, cycle.dispatch_seconds),
        "get_step_p99_ms": get_step["p99_ms"] if get_step else None,
        "server_cpu_ms_per_step": _cpu_ms_per([cycle.step_cpu_seconds], cycle.steps),
    }


def window_rates(cycle, start, end):
    """Return the step rate and latencies of the requests sent in ``[start, end)``.

    Times are time.monotonic() seconds. Steps are counted by their reports,
    so a report sent again after a 5xx reply counts twice.
    """

    def sent_in_window(kind):
        pairs = zip(
            cycle.stats.sent_at.get(kind, []),
            cycle.stats.latencies.get(kind, []),
            strict=True,
        )
        return [latency for sent, latency in pairs if start <= sent < end]

    get_step, report = sent_in_window("get_step"), sent_in_window("report")
    return {
        "seconds": round(end - start, 2),
        "steps_per_second": _rate(len(report), end - start),
        "get_step_p99_ms": _p99_ms(get_step),
        "report_p99_ms": _p99_ms(report),
        "keep_alive_p99_ms": _p99_ms(sent_in_window("keep_alive")),
    }


def _p99_ms(latencies):
    if not latencies:
        return None
    return round(clients.percentile(latencies, 99) * 1000, 2)


def ratios(before, after):
    """Return ``after / before`` for each key, or None where either is missing."""
    result = {}
    for key in before:
        known = before[key] and after[key] is not None
        result[key] = round(after[key] / before[key], 3) if known else None
    return result


def _rate(count, seconds):
    return round(count / seconds, 1) if seconds else None


def measure_baseline(target, volume, processes, timeout, cpu_clock=None):
    """Send ``volume`` requests to the trivial app and return its request rate."""
    shares = clients.split_evenly(volume, processes)
    work = [(target, share) for share in shares if share]
    cpu_at_start = _read(cpu_clock)
    started, results = clients.run_phase(
        "baseline", clients.send_baseline_cycles, work, timeout
    )
    cpu_seconds = _difference(_read(cpu_clock), cpu_at_start)
    seconds = max(r["finished_at"] for r in results) - started
    stats = clients.merge_stats(results)
    sent = clients.request_count(stats)
    return {
        "requests": sent,
        "seconds": seconds,
        "requests_per_second": round(sent / seconds, 1),
        "cpu_seconds": cpu_seconds,
        "stats": stats,
    }


def summarize_baselines(bursts):
    """Pool the baseline bursts of every round."""
    stats = clients.merge_stats([{"stats": b["stats"].as_dict()} for b in bursts])
    sent = sum(b["requests"] for b in bursts)
    return {
        "baseline_requests": sent,
        "baseline_requests_per_second": _rate(sent, sum(b["seconds"] for b in bursts)),
        "baseline_server_cpu_ms_per_request": _cpu_ms_per(
            [b["cpu_seconds"] for b in bursts], sent
        ),
        "baseline_latency_ms": clients.latency_summary(stats, BASELINE_KINDS),
        "baseline_non_2xx": stats.status_5xx + stats.status_other_non_2xx,
    }
