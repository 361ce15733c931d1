"""The small `sagemaker-pipe NAME ...` commands: validate, from-job, status.

Each takes its own arguments and returns an exit status; a PipeError becomes the CLI's one
`sagemaker-pipe: error: ...` line (cli.main prints it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from sagemaker_pipe.config import Channel, Job, load_job, parse_job
from sagemaker_pipe.errors import ConfigError
from sagemaker_pipe.filemode import FILE_MODES, file_copies, mode_notes
from sagemaker_pipe.fromjob import channel_file, parse_map
from sagemaker_pipe.layout import DEFAULT_ML_ROOT, Layout, status_file
from sagemaker_pipe.options import ENV, PROG, Parser
from sagemaker_pipe.plan import ChannelPlan, check_local_paths, plan_job
from sagemaker_pipe.progress import human_size, pid_namespace
from sagemaker_pipe.sources import ObjectRef

STALE_S = 30.0  # a status file not refreshed for this long belongs to a sidecar that is gone


# ------------------------------------------------------------------------------------------
# validate
# ------------------------------------------------------------------------------------------

def validate(argv: list[str]) -> int:
    p = Parser(prog=f"{PROG} validate",
                description="Check a channel file and print the plan the sidecar would serve, channel by channel.")
    p.add_argument("file", metavar="FILE", help="channel file (YAML or JSON)")
    p.add_argument("--check-sources", action="store_true",
                   help="also list every source and read every manifest: object counts, sizes, missing objects")
    p.add_argument("--ml-root", default=None, help=f"folder standing for /opt/ml in the paths shown "
                   f"(default {DEFAULT_ML_ROOT})")
    p.add_argument("--hosts", help="comma-separated host names (overrides ResourceConfig)")
    p.add_argument("--current-host", help="which of the hosts to show the shard of")
    p.add_argument("--skip-path-check", action="store_true",
                   help="do not check that local paths exist (a channel file for a container, such as one for "
                        "compose, names paths as the sidecar there sees them)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = p.parse_args(argv)
    job = load_job(args.file, hosts=args.hosts.split(",") if args.hosts else None, current_host=args.current_host)
    layout = Layout.under(args.ml_root or os.environ.get(ENV["ml_root"]) or DEFAULT_ML_ROOT)
    if not args.skip_path_check:
        check_local_paths(job, hint=" (paths as a container sees them? add --skip-path-check)")
    plans: list[ChannelPlan] | None = None
    if args.check_sources:
        plans = plan_job(job)
        file_copies(plans, layout, warn=False)  # File-mode keys that would escape their folder: exit 2
    described = describe_job(job, layout, plans)
    if args.json:
        print(json.dumps(described, indent=2))
    else:
        print(render_plan(args.file, described))
    return 0


def describe_job(job: Job, layout: Layout, plans: list[ChannelPlan] | None) -> dict[str, Any]:
    by_name = {p.channel.name: p for p in plans or []}
    receivers = {c.name: frozenset(job.receivers(c)) for c in job.channels}  # once: clusters may be large
    return {
        "hosts": list(job.hosts),
        "current_host": job.current_host,
        "cluster": [{"host": h, "group": g.name, "instance_type": g.instance_type,
                     "channels": [c.name for c in job.channels if h in receivers[c.name]]}
                    for g in job.cluster.groups for h in g.hosts],
        "hyperparameters": job.hyperparameters,
        "sources_checked": plans is not None,
        "channels": [_describe_channel(c, layout, job, by_name.get(c.name)) for c in job.channels],
    }


def _describe_channel(c: Channel, layout: Layout, job: Job, plan: ChannelPlan | None) -> dict[str, Any]:
    receivers = job.receivers(c)
    out: dict[str, Any] = {
        "name": c.name, "mode": c.input_mode, "data_type": c.data_type, "uri": c.uri,
        "distribution": c.distribution, "compression": c.compression, "record_wrapper": c.record_wrapper,
        "content_type": c.content_type, "shuffle_seed": c.shuffle_seed,
        "instance_groups": list(c.instance_groups), "receivers": list(receivers),
        "delivered": job.current_host in receivers,
    }
    if c.attribute_names:
        out["attribute_names"] = list(c.attribute_names)
    if c.input_mode in FILE_MODES:
        out["folder"] = str(layout.folder(c.name)) + "/"
    else:
        out["fifos"] = [str(layout.fifo(c.name, n)) for n in range(3)]
    if plan is not None:
        refs = plan.objects
        share = [p for u in plan.epoch(0) for p in u.parts if isinstance(p, ObjectRef)]
        out.update(units=len(plan.units), objects=len(refs), bytes=sum(r.size or 0 for r in refs),
                   host_units=len(plan.epoch(0)), host_objects=len(share),
                   host_bytes=sum(r.size or 0 for r in share))
    notes = mode_notes(plan or ChannelPlan(c, ()))
    if c.distribution == "ShardedByS3Key" and len(receivers) == 1:
        notes.append("ShardedByS3Key with one host: the host gets every unit")
    out["notes"] = notes
    return out


def render_plan(source: str, d: dict[str, Any]) -> str:
    hosts = d["hosts"]
    lines = [f"{source}: {len(d['channels'])} channel{'s' if len(d['channels']) != 1 else ''}, "
             f"host {d['current_host']} of {len(hosts)} ({', '.join(hosts)}), "
             f"{len(d['hyperparameters'])} hyperparameter{'s' if len(d['hyperparameters']) != 1 else ''}"]
    lines.append("")
    lines.append("hosts (instance group, instance type: channels):")
    width = max(len(h["host"]) for h in d["cluster"])
    for h in d["cluster"]:
        this = "  <- this host" if h["host"] == d["current_host"] else ""
        lines.append(f"  {h['host']:<{width}}  {h['group']}, {h['instance_type']}: "
                     f"{', '.join(h['channels']) or '(no channels)'}{this}")
    for c in d["channels"]:
        lines.append("")
        lines.append(f"channel {c['name']}: {c['mode']} mode")
        row = [("data type", c["data_type"]), ("source", c["uri"])]
        if "attribute_names" in c:
            row.append(("attributes", ", ".join(c["attribute_names"])))
        if "objects" in c:
            unit = {"S3Prefix": "objects", "ManifestFile": "manifest entries",
                    "AugmentedManifestFile": "lines"}[c["data_type"]]
            text = _count(c["units"], unit)
            if c["data_type"] == "AugmentedManifestFile":
                text += f", {_count(c['objects'], 'referenced objects')}"
            text += f", {_bytes(c['bytes'])}"
            if len(c["receivers"]) > 1 and c["distribution"] == "ShardedByS3Key" and c["delivered"]:
                text += f" (this host, epoch 0: {_count(c['host_units'], unit)}, {_bytes(c['host_bytes'])})"
            row.append(("objects", text))
        file_mode = c["mode"] in FILE_MODES
        row.append(("compression", c["compression"] + (" (not applied in File mode)"
                                                       if file_mode and c["compression"] != "None" else "")))
        wrapper = c["record_wrapper"]
        if wrapper == "RecordIO":
            wrapper += " (not applied in File mode)" if file_mode else " (each object becomes one record)"
        row.append(("record wrapper", wrapper))
        if c["content_type"] is not None:
            row.append(("content type", c["content_type"]))
        if c["shuffle_seed"] is None:
            row.append(("shuffle", "off (listing order every epoch)" if not file_mode else "off"))
        else:
            row.append(("shuffle", f"seed {c['shuffle_seed']}" + ("" if file_mode else ", a new order every epoch")))
        dist, receivers = c["distribution"], c["receivers"]
        if dist == "ShardedByS3Key":
            dist += f" over {len(receivers)} host{'s' if len(receivers) != 1 else ''}"
        row.append(("distribution", dist))
        if c["instance_groups"]:
            row.append(("groups", f"{', '.join(c['instance_groups'])} ({', '.join(receivers) or 'no hosts'})"))
        if not c["delivered"]:
            sees = "nothing on this host (not in the channel's instance groups): no FIFO, no folder, not in " \
                   "inputdataconfig.json"
        elif file_mode:
            sees = f"{c['folder']} (a folder, filled before the algorithm starts"
            sees += f": {_count(c['host_objects'], 'files')})" if "host_objects" in c else ")"
        else:
            first = c["fifos"][0]
            sees = f"{first}, {', '.join(Path(f).name for f in c['fifos'][1:])}, ... (one FIFO per epoch)"
        row.append(("algorithm sees", sees))
        for note in c["notes"]:
            row.append(("note", note))
        lines += [f"  {k + ':':<16}{v}" for k, v in row]
    lines.append("")
    lines.append("valid: sources checked" if d["sources_checked"]
                 else "valid (sources not checked: add --check-sources to list them and read manifests)")
    return "\n".join(lines)


def _count(n: int, plural: str) -> str:
    """`1 object`, `2 objects`, `1 manifest entry`: the plural given, made singular for 1."""
    if n != 1:
        return f"{n} {plural}"
    singular = {"objects": "object", "manifest entries": "manifest entry", "lines": "line",
                "referenced objects": "referenced object", "files": "file"}.get(plural, plural)
    return f"{n} {singular}"


def _bytes(n: int) -> str:
    return f"{n:,} bytes" + (f" ({human_size(n)})" if n >= 1000 else "")


# ------------------------------------------------------------------------------------------
# from-job
# ------------------------------------------------------------------------------------------

def from_job(argv: list[str]) -> int:
    p = Parser(prog=f"{PROG} from-job",
                description="Turn `aws sagemaker describe-training-job` JSON into a channel file (YAML, on stdout).")
    p.add_argument("describe", metavar="DESCRIBE.json", help="the describe-training-job output ('-' for stdin)")
    p.add_argument("--map", action="append", default=[], metavar="s3://BUCKET/PREFIX=FOLDER",
                   help="serve URIs under this prefix from a local folder (repeatable; longest prefix wins)")
    args = p.parse_args(argv)
    maps = [parse_map(m) for m in args.map]
    try:
        text = sys.stdin.read() if args.describe == "-" else Path(args.describe).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {args.describe}: {getattr(e, 'strerror', None) or e}") from None
    try:
        describe = yaml.safe_load(text)  # JSON is YAML; a saved YAML copy works too
    except yaml.YAMLError:
        raise ConfigError(f"{args.describe} is not valid JSON") from None
    doc, notes = channel_file(describe, maps)
    parse_job(doc, base_dir=Path.cwd(), source="the converted job")  # what is printed must load
    name = describe.get("TrainingJobName") if isinstance(describe, dict) else None
    header = (f"# Channel file for sagemaker-pipe, from describe-training-job"
              f"{' of ' + str(name) if name else ''}.\n"
              "# Relative local paths are resolved against this file's folder.\n")
    for note in notes:
        header += f"# note: {note}\n"
        print(f"{PROG}: note: {note}", file=sys.stderr)
    sys.stdout.write(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False))
    return 0


# ------------------------------------------------------------------------------------------
# status
# ------------------------------------------------------------------------------------------

def status(argv: list[str]) -> int:
    """Exit 0 when the sidecar's status file says it is ready (a container health check), with its progress."""
    p = Parser(prog=f"{PROG} status",
                description="Show the running sidecar's progress; exit 0 once it is ready (config files, "
                            "File-mode data and every first FIFO exist).")
    p.add_argument("--ml-root", help=f"the sidecar's ml-root, whose status file to read (default "
                   f"{ENV['ml_root']}, else {DEFAULT_ML_ROOT})")
    p.add_argument("--status-file", help=f"read this status file instead (default {ENV['status_file']}, else "
                   "<ml-root>/input/.sagemaker-pipe/status.json): the sidecar's --status-file")
    p.add_argument("--json", action="store_true", help="print the status file's JSON")
    args = p.parse_args(argv)
    path = status_file(args.status_file or os.environ.get(ENV["status_file"]),
                       args.ml_root or os.environ.get(ENV["ml_root"]) or DEFAULT_ML_ROOT)
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            raise ValueError
    except FileNotFoundError:
        doc = None
        why = f"no status file at {path}: the sidecar has not started yet, or has exited"
    except (OSError, ValueError):
        doc = None
        why = f"cannot read {path} as a status file"
    ready = False
    if doc is not None:
        age = time.time() - doc["updated"] if isinstance(doc.get("updated"), (int, float)) else 0.0
        ready = doc.get("ready") is True
        why = "" if ready else "config files, File-mode data or first FIFOs not all written yet"
        gone = _gone(doc)
        if gone:
            ready, why = False, gone
        elif doc.get("state") == "failed":
            why = f"a stream failed: {doc.get('error')}"
        elif age > max(STALE_S, 10 * float(doc.get("interval_s") or 0)):
            ready = False
            why = f"the status file was last updated {age:.0f} s ago: is the sidecar still running?"
    if args.json:
        print(json.dumps(doc if doc is not None else {"ready": False, "reason": why}, indent=2))
    else:
        print(render_status(doc, ready, why))
    return 0 if ready else 1


def _gone(doc: dict[str, Any]) -> str:
    """Why the sidecar that wrote the status file is known to be gone, or "" (unknown, or running).

    Only a pid from this pid namespace means anything here: a status file read through a volume
    from another container names a process of that container.
    """
    pid, ns = doc.get("pid"), pid_namespace()
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or ns is None or doc.get("pid_ns") != ns:
        return ""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        state = "gone"
    except OSError:  # not ours to signal: it exists
        return ""
    if state in ("gone", "Z", "X"):  # a zombie has exited, only its parent has not noticed yet
        return f"the sidecar (pid {pid}) is no longer running"
    return ""


def render_status(doc: dict[str, Any] | None, ready: bool, why: str) -> str:
    head = "ready" if ready else f"not ready ({why})" if why else "not ready"
    if doc is None:
        return head
    now = time.time()
    bits = []
    if "pid" in doc:
        bits.append(f"sidecar pid {doc['pid']}")
    if isinstance(doc.get("started"), (int, float)):
        bits.append(f"up {_duration(now - doc['started'])}")
    if isinstance(doc.get("updated"), (int, float)):
        bits.append(f"updated {max(0.0, now - doc['updated']):.1f} s ago")
    lines = [head + (": " + ", ".join(bits) if bits else "")]
    progress = doc.get("progress")
    if isinstance(progress, dict) and progress:
        rows = [("CHANNEL", "MODE", "STATE", "EPOCH", "EPOCHS DONE", "BYTES", "MB/S", "LAST EPOCH")]
        for name, p in progress.items():
            pipe = p.get("mode") == "Pipe"
            state = p.get("state", "?")
            if pipe and state == "waiting":
                state = f"waiting for reader {p.get('state_s', 0):.0f} s"
            nbytes = p.get("bytes", 0)
            total = p.get("total_bytes")
            size = human_size(nbytes) + (f" of {human_size(total)}" if not pipe and total else "")
            rows.append((name, str(p.get("mode", "?")), state,
                         str(p.get("epoch", "-")) if pipe else "-",
                         str(p.get("epochs_complete", "-")) if pipe else "-",
                         size, f"{p.get('mb_per_s', 0):.1f}", _last_epoch(p.get("last_epoch"))))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _last_epoch(last: Any) -> str:
    """`algorithm-bound (writer blocked 81%, reader starved 2%)`: is the algorithm waiting for data?"""
    if not isinstance(last, dict) or not last.get("seconds"):
        return "-"
    wall = last["seconds"]
    return (f"{last.get('verdict', '?')} (writer blocked {100 * last.get('writer_blocked_s', 0) / wall:.0f}%, "
            f"reader starved {100 * last.get('reader_starved_s', 0) / wall:.0f}%)")


def _duration(s: float) -> str:
    s = max(0, int(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
