"""``make deploy-check``: the deploy files proven for real, without a systemd host or a registry.

Two parts, each a whole session through the project's stand-ins (bridge/sim):

container  a Debian 12 base image made locally (mmdebstrap, ``podman import``), the project's image
           built from the Dockerfile with ``PYTHON_IMAGE`` pointing at it, run as the README says
           (socket directory bind-mounted, state volume, credentials by environment), HEALTHCHECK
           healthy, ``avatar-bridge say`` from the host through the bind-mounted socket, the avatar
           in sync at the Stream stand-in, ``podman stop -t 30`` drains and exits 0.
systemd    a Debian 12 root filesystem booted with systemd in ``systemd-nspawn``, the project
           installed by running docs/deployment.md's own commands, deploy/systemd/* in place, the
           socket unit started; a client's connection starts the service (socket activation),
           READY and the watchdog, a whole session under every hardening directive of the shipped
           unit, ``systemctl stop`` drains; ``systemd-analyze security`` from inside.

The script runs in two processes: ``prepare`` (image and root filesystem builds, which need the
package registries) on the host's network, then ``run`` inside the project's private network
namespace (bridge/sim/netns.py) with the stand-ins in-process; podman uses ``--network host`` and
nspawn no ``--private-network`` there, so both share that namespace: signalling on 127.0.0.1, WebRTC
over the namespace's veth pair. Everything it starts is stopped in ``finally`` blocks, every wait
is bounded, and it ends with a table of what was verified, with timings.

Caches (gitignored ``.deploy-cache/``): the base image and the root filesystem are keyed by the
inputs that make them (suite, variant, package list), podman's layers live in a
storage of their own there, and pip's download cache is shared with the nspawn installs. A warm run
rebuilds nothing whose inputs did not change but still installs and runs everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
# Debian 12's python3 is 3.11, as the Dockerfile's default base; python-is-python3 gives the
# Dockerfile's `python`.
IMAGE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
MACHINE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "iproute2", "ca-certificates",
    "util-linux", "procps",
)  # fmt: skip
# Host tools, by command, and the Debian package that provides each.
TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "podman": "podman",
    "runc": "runc",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
    "setpriv": "util-linux",
    "ip": "iproute2",
}
IMAGE = "localhost/avatar-bridge:deploy-check"
CONTAINER = "avatar-bridge-deploy-check"
STATE_VOLUME = "avatar-bridge-deploy-check-state"
# Inside the booted machine: where the operator's checkout sits while docs/deployment.md's install
# block runs (a local source tree's usual place), and pip's cache, bound to a host cache dir.
CHECKOUT = Path("/usr/local/src/avatar-bridge")
PIP_CACHE = "/var/cache/pip"
# The socket directory's group on the host (a number: no host account is created) and the client
# that speaks through it as a member of that group, not as root.
SOCKET_GID, CLIENT_UID = 10002, 20001
LIVEAVATAR_KEY = "standin-liveavatar-key"
# Set in the container as Kubernetes' Secret does: the drain endpoint then needs it.
ADMIN_TOKEN = "deploy-check-admin-token"
# The stand-ins' cheap configuration (bridge.sim.stack.SMALL) as environment variables.
SMALL_ENV = {
    "AVATAR_BRIDGE_LIVEAVATAR__VIDEO_QUALITY": "low",
    "AVATAR_BRIDGE_LIVEAVATAR__VIDEO_ENCODING": "VP8",
    "AVATAR_BRIDGE_OUTPUT__WIDTH": "640",
    "AVATAR_BRIDGE_OUTPUT__HEIGHT": "360",
}
# Containers.conf for this machine (docs/deployment.md, "Verified by make deploy-check"): podman's
# default ulimits exceed the hard limits and root lacks CAP_SYS_RESOURCE; the pids cgroup limit
# is refused on hybrid cgroups.
CONTAINERS_CONF = "[containers]\ndefault_ulimits = []\npids_limit = 0\n"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TRUSTED_CA_PATH = "/etc/ssl/host-ca-bundle.crt"
BEEPS = 10  # sync marks spoken per session; the stand-in pairs each beep with a video flash


# ----- results ---------------------------------------------------------------------------------


@dataclass
class Row:
    part: str
    check: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Results:
    path: Path
    rows: list[Row] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Results:
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text())
        return cls(path, [Row(**r) for r in data["rows"]], data.get("facts", {}))

    def save(self) -> None:
        body = {"rows": [asdict(r) for r in self.rows], "facts": self.facts}
        self.path.write_text(json.dumps(body, indent=2) + "\n")

    def add(self, part: str, check: str, ok: bool, seconds: float, detail: str = "") -> None:
        self.rows.append(Row(part, check, ok, round(seconds, 1), detail))
        self.save()
        mark = "ok  " if ok else "FAIL"
        print(f"[deploy-check] {mark} {part}: {check} ({seconds:.1f} s) {detail}", flush=True)


class CheckFailed(Exception):
    """A verification failed: the part stops there (its cleanup still runs)."""


@contextlib.contextmanager
def step(results: Results, part: str, check: str) -> Iterator[list[str]]:
    """Time a check; the body appends its detail to the yielded list, raises CheckFailed to fail."""
    detail: list[str] = []
    t0 = time.monotonic()
    try:
        yield detail
    except Exception as exc:
        print(f"[deploy-check] {part}: {check} failed:\n{exc}", file=sys.stderr, flush=True)
        last = [ln for ln in str(exc).splitlines() if ln.strip()][-1:] or [type(exc).__name__]
        results.add(part, check, False, time.monotonic() - t0, last[0][:200])
        raise
    results.add(part, check, True, time.monotonic() - t0, "; ".join(detail))


def format_table(rows: Sequence[Row]) -> str:
    """The closing table: one line per verified fact, its time, and what it measured."""
    head = ("part", "check", "result", "time (s)", "detail")
    body = [(r.part, r.check, "ok" if r.ok else "FAIL", f"{r.seconds:.1f}", r.detail) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(4)]
    lines = []
    for cells in [head, *body]:
        lead = "  ".join(c.ljust(w) for c, w in zip(cells[:4], widths, strict=True))
        lines.append(f"{lead}  {cells[4]}".rstrip())
    lines.insert(1, "-" * min(120, max(len(line) for line in lines)))
    return "\n".join(lines)


def parse_table(text: str) -> list[Row]:
    """Inverse of format_table (the test checks the round trip; CI greps the table)."""
    rows = []
    for line in text.splitlines()[2:]:
        m = re.match(r"(\S+)\s{2,}(.+?)\s{2,}(ok|FAIL)\s{2,}(\d+\.\d)\s*(.*)$", line)
        if m:
            part, check, res, secs, detail = m.groups()
            rows.append(Row(part, check.strip(), res == "ok", float(secs), detail.strip()))
    return rows


# ----- subprocesses ----------------------------------------------------------------------------


def run(
    cmd: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
    cwd: Path | None = None,
    quiet: bool = True,
) -> subprocess.CompletedProcess[str]:
    """A bounded command; its output is kept (and shown when it fails)."""
    done = subprocess.run(
        list(cmd),
        input=input_text,
        stdin=None if input_text is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        check=False,
    )
    if not quiet:
        sys.stdout.write(done.stdout)
    if check and done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-25:]
        raise CheckFailed(f"{shlex.join(cmd[:4])}... exited {done.returncode}: " + "\n".join(tail))
    return done


def nice(cmd: Sequence[str]) -> list[str]:
    # Heavy builds share the machine's cores with other work.
    return ["nice", "-n", "10", *cmd]


def ensure_tools() -> None:
    missing = sorted({pkg for cmd, pkg in TOOLS.items() if shutil.which(cmd) is None})
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], timeout=300, env=env)
    run(["apt-get", "install", "-y", "-qq", *missing], timeout=900, env=env)


def key_of(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def apt_sources() -> list[str]:
    """The host's apt sources for mmdebstrap (a file argument is pasted into the chroot's list)."""
    for candidate in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        if Path(candidate).is_file() and Path(candidate).read_text().strip():
            return [candidate]
    return []


# ----- paths -----------------------------------------------------------------------------------


@dataclass
class Paths:
    cache: Path

    @property
    def rootfs(self) -> Path:
        return self.cache / "rootfs"

    @property
    def pip(self) -> Path:
        return self.cache / "pip"

    @property
    def storage(self) -> Path:
        return self.cache / "podman"

    @property
    def work(self) -> Path:
        return self.cache / "run"

    @property
    def machine(self) -> Path:
        return self.work / "machine"

    @property
    def sockdir(self) -> Path:
        return self.work / "socket"

    @property
    def results(self) -> Path:
        return self.work / "results.json"

    @property
    def containers_conf(self) -> Path:
        return self.work / "containers.conf"

    def podman(self, *args: str) -> list[str]:
        # A storage of our own: the cached layers are ours, and cleanup cannot touch anyone else's.
        return [
            "podman",
            "--root", str(self.storage / "root"),
            "--runroot", str(self.work / "podman-run"),
            "--runtime", "runc",
            "--cgroup-manager", "cgroupfs",
            *args,
        ]  # fmt: skip

    def podman_env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.containers_conf)}


# ----- prepare (host network) ------------------------------------------------------------------


def prepare_container(p: Paths, results: Results) -> None:
    part = "container"
    key = key_of(SUITE, "minbase", *IMAGE_PACKAGES)
    base = f"localhost/debian-python:{SUITE}-{key}"
    env = p.podman_env()
    with step(results, part, "Debian 12 base image (mmdebstrap -> podman import)") as d:
        exists = run(p.podman("image", "exists", base), timeout=60, check=False, env=env)
        if exists.returncode == 0:
            d.append(f"cached {base}")
        else:
            tar = p.rootfs / f"image-{key}.tar"
            if not tar.exists():
                tmp = tar.with_suffix(".tmp.tar")
                run(
                    nice([
                        "mmdebstrap", "--variant=minbase", "--include=" + ",".join(IMAGE_PACKAGES),
                        SUITE, str(tmp), *apt_sources(),
                    ]),
                    timeout=900,
                )  # fmt: skip
                tmp.rename(tar)
            run(p.podman("import", str(tar), base), timeout=300, env=env)
            d.append(f"built {base}")
    with step(results, part, "podman build (Dockerfile, PYTHON_IMAGE=local base)") as d:
        run(
            nice(p.podman(
                # --format docker: the OCI image format (podman's default) has no HEALTHCHECK
                # and podman would silently drop the Dockerfile's.
                "build", "--format", "docker", "--isolation=chroot",
                "--build-arg", f"PYTHON_IMAGE={base}",
                *trust_args(p, "--volume"),
                "-t", IMAGE, "-f", str(ROOT / "Dockerfile"), str(ROOT),
            )),
            timeout=1800,
            env=env,
        )  # fmt: skip
        size = run(
            p.podman("image", "inspect", "--format", "{{.Size}}", IMAGE), timeout=60, env=env
        )
        d.append(f"{IMAGE}, {int(size.stdout.strip()) / 1e6:.0f} MB")


def doc_block(name: str) -> str:
    """The shell block docs/deployment.md marks with ``<!-- deploy-check: NAME -->``."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    m = re.search(rf"<!-- deploy-check: {re.escape(name)} -->\s*```sh\n(.*?)```", text, re.S)
    if not m:
        raise CheckFailed(f"docs/deployment.md has no block marked deploy-check: {name}")
    return m.group(1)


def source_files() -> list[str]:
    """What a fresh clone holds: the tracked files plus new, not ignored ones."""
    out = run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], timeout=60, cwd=ROOT
    ).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def trust_args(p: Paths, flag: str) -> list[str]:
    """Lend the host's CA bundle to pip in a build or install (RUN steps only, never the image).

    Machines behind a TLS-inspecting proxy trust its CA in the system bundle; pip inside a fresh
    image or root filesystem would not, and pip uses its own bundle unless told. Harmless elsewhere.
    """
    bundle = Path(HOST_CA_BUNDLE)
    if not bundle.is_file():
        return []
    conf = p.work / "pip.conf"
    conf.write_text(f"[global]\ncert = {TRUSTED_CA_PATH}\n")
    mounts = [(bundle, TRUSTED_CA_PATH), (conf, "/etc/pip.conf")]
    if flag == "--volume":  # podman build
        return [f"--volume={src}:{dst}:ro" for src, dst in mounts]
    return [f"--bind-ro={src}:{dst}" for src, dst in mounts]  # systemd-nspawn


def nspawn_env() -> dict[str, str]:
    # Hybrid cgroups here: systemd in the container must be given the unified hierarchy.
    return {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}


def prepare_systemd(p: Paths, results: Results) -> None:
    part = "systemd"
    key = key_of(SUITE, "minbase", *MACHINE_PACKAGES)
    cached = p.rootfs / f"machine-{key}"
    with step(results, part, "Debian 12 root filesystem with systemd (mmdebstrap)") as d:
        if cached.exists():
            d.append(f"cached machine-{key}")
        else:
            tmp = cached.with_name(cached.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            run(
                nice([
                    "mmdebstrap", "--variant=minbase", "--include=" + ",".join(MACHINE_PACKAGES),
                    SUITE, str(tmp), *apt_sources(),
                ]),
                timeout=900,
            )  # fmt: skip
            tmp.rename(cached)
            d.append(f"built machine-{key}")
        shutil.rmtree(p.machine, ignore_errors=True)
        run(["cp", "-a", "--reflink=auto", str(cached), str(p.machine)], timeout=300)
    with step(results, part, "install as docs/deployment.md says (venv, units, credentials)") as d:
        src = p.machine / CHECKOUT.relative_to("/")
        for rel in source_files():
            dest = src / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest)
        p.pip.mkdir(parents=True, exist_ok=True)
        script = 'set -eux\nsudo() { "$@"; }\nuseradd --create-home alice\n' + doc_block(
            "systemd-install"
        )
        run(
            nice([
                "systemd-nspawn", "-q", "-D", str(p.machine), "--pipe", "--register=no",
                "--keep-unit", f"--bind={p.pip}:{PIP_CACHE}", f"--setenv=PIP_CACHE_DIR={PIP_CACHE}",
                f"--chdir={CHECKOUT}",
                *trust_args(p, "--bind-ro"),
                f"--setenv=LIVEAVATAR_API_KEY={LIVEAVATAR_KEY}",
                "--setenv=STREAM_API_KEY=placeholder", "--setenv=STREAM_API_SECRET=placeholder",
                "bash", "-s",
            ]),
            timeout=1200,
            env=nspawn_env(),
            input_text=script,
        )  # fmt: skip
        version = run(
            ["chroot", str(p.machine), "/usr/bin/avatar-bridge", "--version"], timeout=60
        ).stdout.strip()
        d.append(version)


# ----- run (inside the network namespace) ------------------------------------------------------


def write_wav(path: Path, pcm: bytes, rate: int = 24000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


def make_wavs(folder: Path) -> tuple[Path, Path]:
    """A short turn of sync marks (after a lead-in while the avatar joins) and a long one."""
    import numpy as np

    from bridge.sim.marks import beep_train

    folder.mkdir(parents=True, exist_ok=True)
    lead = np.zeros(3 * 24000, dtype=np.int16)
    marks = np.concatenate([lead, beep_train(24000, BEEPS, 500, 100)])
    long = np.concatenate([lead, beep_train(24000, 90, 500, 100)])  # 48 s: outlasts the drain
    short_path, long_path = folder / "beeps.wav", folder / "long.wav"
    write_wav(short_path, marks.tobytes())
    write_wav(long_path, long.tobytes())
    os.chmod(folder, 0o755)
    for f in (short_path, long_path):
        os.chmod(f, 0o644)
    return short_path, long_path


def say_events(stdout: str) -> dict[str, dict[str, Any]]:
    """``avatar-bridge say`` prints ``KIND {json}`` lines; the events by name (and READY)."""
    out: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        kind, _, body = line.partition(" ")
        with contextlib.suppress(ValueError):
            fields = json.loads(body)
            if kind == "EVENT":
                out[str(fields.get("event"))] = fields
            elif kind in ("READY", "ERROR"):
                out[kind] = fields
    return out


class Standins:
    """The stand-ins in this process, and what their measurement APIs say about a call."""

    def __init__(self) -> None:
        from bridge.sim.stack import StandIns

        self.sim = StandIns(render_latency_s=0.2)

    async def __aenter__(self) -> Standins:
        await self.sim.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sim.aclose()

    def env(self) -> dict[str, str]:
        s = self.sim
        return {
            "LIVEAVATAR_API_KEY": LIVEAVATAR_KEY,
            "LIVEAVATAR_BASE_URL": s.liveavatar.base_url,
            "STREAM_API_KEY": s.stream.api_key,
            "STREAM_API_SECRET": s.stream.api_secret,
            "STREAM_BASE_URL": s.stream.base_url,
            "AVATAR_BRIDGE_STREAM__WS_URL": s.stream.ws_url,
            **SMALL_ENV,
        }

    def check_sync(self, call_id: str, detail: list[str], bound_ms: float = 100) -> dict[str, Any]:
        stats = self.sim.stream.stats("default", call_id)
        skews = self.sim.stream.measure("default", call_id).skews_ms()
        video = stats["video"]
        if video["frames"] < 50 or len(skews) < 3:
            raise CheckFailed(f"too little reached the call: {video['frames']} frames, {skews}")
        median = statistics.median(skews)
        # Loose, as the end-to-end tests: the benchmark holds the sync goal; this proves the path.
        if abs(median) > bound_ms:
            raise CheckFailed(f"A/V skew median {median:.0f} ms: {skews}")
        detail.append(
            f"{video['resolution']} {video['frames']} frames @ {video['fps']} fps, "
            f"skew median {median:+.0f} ms over {len(skews)} marks"
        )
        return {"skew_median_ms": round(median, 1), "frames": video["frames"]}

    async def no_session_left(self, detail: list[str]) -> None:
        for _ in range(50):
            if not self.sim.liveavatar.live_sessions:
                detail.append("0 LiveAvatar sessions left")
                return
            await asyncio.sleep(0.1)
        raise CheckFailed(f"LiveAvatar sessions left: {self.sim.liveavatar.live_sessions}")


async def arun(
    cmd: Sequence[str], *, limit_s: float, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run, cmd, timeout=limit_s, env=env, check=check)


def spawn(cmd: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A client left running (the drain checks stop the daemon under it)."""
    return subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


async def wait_for_line(proc: subprocess.Popen[str], pattern: str, limit_s: float) -> list[str]:
    """Read ``proc``'s stdout until a line contains ``pattern``; returns the lines read."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(
            asyncio.to_thread(proc.stdout.readline), deadline - time.monotonic()
        )
        if not line:
            break
        lines.append(line)
        if pattern in line:
            return lines
    raise CheckFailed(f"no {pattern!r} from the client: {''.join(lines)[-500:]}")


def stop_proc(proc: subprocess.Popen[str] | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


async def container_part(p: Paths, results: Results, st: Standins, wavs: tuple[Path, Path]) -> None:
    part = "container"
    env = {**p.podman_env(), **st.env(), "AVATAR_BRIDGE_ADMIN__TOKEN": ADMIN_TOKEN}
    client_env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_BRIDGE_")}
    sock = p.sockdir / "bridge.sock"
    # The README's host side: a socket directory owned by the image's user, setgid to the
    # clients' group.
    shutil.rmtree(p.sockdir, ignore_errors=True)
    p.sockdir.mkdir(parents=True)
    os.chown(p.sockdir, 10001, SOCKET_GID)
    os.chmod(p.sockdir, 0o2770)
    as_client = ["setpriv", f"--reuid={CLIENT_UID}", f"--regid={CLIENT_UID}",
                 f"--groups={SOCKET_GID}", "--"]  # fmt: skip
    cli = str(Path(sys.executable).with_name("avatar-bridge"))
    await arun(p.podman("rm", "-f", "--ignore", CONTAINER), limit_s=60, env=env)
    await arun(p.podman("volume", "rm", "-f", STATE_VOLUME), limit_s=60, env=env, check=False)
    drain_say: subprocess.Popen[str] | None = None
    try:
        with step(results, part, "podman run (README flags) -> HEALTHCHECK healthy") as d:
            t0 = time.monotonic()
            await arun(
                p.podman(
                    "run", "-d", "--name", CONTAINER, "--network", "host",
                    "-v", f"{p.sockdir}:/run/avatar-bridge",
                    "-v", f"{STATE_VOLUME}:/var/lib/avatar-bridge",
                    *[a for k in st.env() for a in ("-e", k)],
                    "-e", "AVATAR_BRIDGE_ADMIN__TOKEN",
                    IMAGE,
                ),
                limit_s=120,
                env=env,
            )  # fmt: skip
            while True:
                hc = await arun(
                    p.podman("healthcheck", "run", CONTAINER), limit_s=30, env=env, check=False
                )
                if hc.returncode == 0:
                    break
                state = await arun(
                    p.podman("inspect", "--format", "{{.State.Status}}", CONTAINER),
                    limit_s=30,
                    env=env,
                )
                if state.stdout.strip() != "running" or time.monotonic() - t0 > 60:
                    logs = await arun(p.podman("logs", CONTAINER), limit_s=30, env=env, check=False)
                    raise CheckFailed(f"not healthy ({state.stdout.strip()}): {logs.stderr[-800:]}")
                await asyncio.sleep(1)
            status = await arun(
                p.podman("inspect", "--format", "{{.State.Health.Status}}", CONTAINER),
                limit_s=30,
                env=env,
            )
            if status.stdout.strip() != "healthy":
                raise CheckFailed(f"health status {status.stdout.strip()!r}")
            mode = oct(sock.stat().st_mode & 0o777) if sock.exists() else "missing"
            d.append(f"healthy after {time.monotonic() - t0:.1f} s; socket {mode}")
            results.facts["container_healthy_s"] = round(time.monotonic() - t0, 1)
        with step(results, part, "avatar-bridge say through the bind-mounted socket") as d:
            said = await arun(
                [*as_client, cli, "say", "-q", "--socket", str(sock),
                 "--call", "default:deploy-container", str(wavs[0])],
                limit_s=120,
                env=client_env,
            )  # fmt: skip
            events = say_events(said.stdout)
            if "speak_ended" not in events or "ERROR" in events:
                raise CheckFailed(f"the turn did not end cleanly: {said.stdout[-800:]}")
            path = events.get("media_path", {}).get("path")
            d.append(f"as uid {CLIENT_UID} (group {SOCKET_GID}, not root); media path {path}")
        with step(results, part, "Stream stand-in received the avatar in sync") as d:
            results.facts["container_sync"] = st.check_sync("deploy-container", d)
        with step(results, part, "Kubernetes' sequence: preStop drain, then stop -t 30") as d:
            drain_say = spawn(
                [*as_client, cli, "say", "-q", "--socket", str(sock),
                 "--call", "default:deploy-container-drain", str(wavs[1])],
                client_env,
            )  # fmt: skip
            await wait_for_line(drain_say, '"event": "published"', 60)

            async def probe(*args: str) -> int:
                done = await arun(
                    p.podman("exec", CONTAINER, "avatar-bridge", *args),
                    limit_s=30, env=env, check=False,
                )  # fmt: skip
                return done.returncode

            # deploy/kubernetes: preStop runs `avatar-bridge drain`; readiness (/readyz) must
            # drop at once while liveness (/healthz) stays up, or the kubelet would restart the
            # container in the middle of its drain.
            t0 = time.monotonic()
            if await probe("drain", "--token", ADMIN_TOKEN) != 0:
                raise CheckFailed("avatar-bridge drain (the preStop hook) failed")
            prestop = time.monotonic() - t0
            ready_rc, live_rc = await probe("health", "--ready"), await probe("health")
            if ready_rc == 0 or live_rc != 0:
                raise CheckFailed(f"after drain: readiness rc {ready_rc}, liveness rc {live_rc}")
            t0 = time.monotonic()
            await arun(p.podman("stop", "-t", "30", CONTAINER), limit_s=60, env=env)
            took = time.monotonic() - t0
            code = await arun(
                p.podman("inspect", "--format", "{{.State.ExitCode}}", CONTAINER),
                limit_s=30,
                env=env,
            )
            logs = await arun(p.podman("logs", CONTAINER), limit_s=30, env=env, check=False)
            if code.stdout.strip() != "0":
                raise CheckFailed(f"exit code {code.stdout.strip()}: {logs.stderr[-800:]}")
            if '"event": "draining"' not in logs.stdout + logs.stderr:
                raise CheckFailed("no draining event in the container's log")
            d.append(
                f"preStop drain {prestop:.1f} s (readiness 503, liveness 200); "
                f"SIGTERM to exit {took:.1f} s (< 30), exit 0"
            )
            results.facts["container_prestop_s"] = round(prestop, 1)
            results.facts["container_drain_s"] = round(took, 1)
            await st.no_session_left(d)
    finally:
        await asyncio.to_thread(stop_proc, drain_say)
        await arun(p.podman("rm", "-f", "--ignore", CONTAINER), limit_s=60, env=env, check=False)
        await arun(p.podman("volume", "rm", "-f", STATE_VOLUME), limit_s=60, env=env, check=False)


class Machine:
    """The booted nspawn container: systemd is PID 1 inside; commands enter its namespaces."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def boot(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    "systemd-nspawn", "-q", "-D", str(self.root), "--boot", "--register=no",
                    "--keep-unit", "--console=pipe", "--machine=avatar-bridge-check",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=nspawn_env(),
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.leader:
            if self.proc.poll() is not None:
                raise CheckFailed(f"nspawn exited: {self.log.read_text()[-800:]}")
            # nspawn's child becomes the container's init once it has exec'd systemd.
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            with contextlib.suppress(OSError, ValueError, IndexError):
                child = int(children.read_text().split()[0])
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    self.leader = child
            time.sleep(0.1)
        if not self.leader:
            raise CheckFailed("no container init process")

    def cmd(self, *args: str, user: str | None = None) -> list[str]:
        inner = ["runuser", "-u", user, "--", *args] if user else list(args)
        return ["nsenter", "-t", str(self.leader), "-a", *inner]

    def sh(self, command: str, timeout: float = 60, check: bool = True) -> str:
        return run(self.cmd("sh", "-c", command), timeout=timeout, check=check).stdout.strip()

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def shutdown(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # nspawn turns SIGTERM into an orderly poweroff of the container.
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# The kernel's view of the main process: what the hardening directives must have produced there.
STATUS_PROBES = {
    "NoNewPrivileges": "NoNewPrivs:\t1",
    "SystemCallFilter/RestrictAddressFamilies (seccomp)": "Seccomp:\t2",
    "CapabilityBoundingSet= (empty)": "CapBnd:\t0000000000000000",
    "AmbientCapabilities= (none effective)": "CapEff:\t0000000000000000",
}


def mount_options(mountinfo: str) -> dict[str, set[str]]:
    """Mount point -> its options (per-mount and superblock), from /proc/PID/mountinfo."""
    out: dict[str, set[str]] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, sb = left.split(), right.split()
        if len(fields) >= 6 and len(sb) >= 3:
            out[fields[4]] = {*fields[5].split(","), *sb[2].split(","), "fstype=" + sb[0]}
    return out


def hardening_failures(status: str, mountinfo: str) -> tuple[list[str], int]:
    """The directives whose effect is missing from the process's status and mounts."""
    failures = [name for name, needle in STATUS_PROBES.items() if needle not in status]
    mounts = mount_options(mountinfo)
    expect = {
        "ProtectSystem=strict (/ read-only)": "ro" in mounts.get("/", set()),
        "StateDirectory= writable": "rw" in mounts.get("/var/lib/avatar-bridge", set()),
        # An inaccessible (mode 000, read-only) node is mounted over each home directory.
        "ProtectHome=yes": "ro" in mounts.get("/home", set()),
        "PrivateTmp=yes": "/tmp" in mounts,
        "PrivateDevices=yes": "fstype=tmpfs" in mounts.get("/dev", set()),
        # (With ProcSubset=pid, tried by --try, /proc/sys is not there at all.)
        "ProtectKernelTunables=yes (/proc/sys)": "ro" in mounts.get("/proc/sys", set())
        or "subset=pid" in mounts.get("/proc", set()),
        "ProtectControlGroups=yes": "ro" in mounts.get("/sys/fs/cgroup", set()),
        "ProtectProc=invisible": bool(
            {"hidepid=invisible", "hidepid=2"} & mounts.get("/proc", set())
        ),
    }
    failures += [name for name, ok in expect.items() if not ok]
    return failures, len(STATUS_PROBES) + len(expect)


def check_hardening(m: Machine, pid: str, detail: list[str]) -> None:
    status = m.sh(f"cat /proc/{pid}/status")
    mounts = m.sh(f"cat /proc/{pid}/mountinfo")
    failures, checked = hardening_failures(status, mounts)
    if failures:
        raise CheckFailed("not in force: " + ", ".join(failures))
    detail.append(f"{checked} effects seen by the kernel on the main process")


async def systemd_part(
    p: Paths, results: Results, st: Standins, wavs: tuple[Path, Path], extra: Sequence[str] = ()
) -> None:
    part = "systemd"
    m = Machine(p.machine, p.work / "machine-console.log")
    share = p.machine / "usr" / "local" / "share" / "deploy-check"
    share.mkdir(parents=True, exist_ok=True)
    for wav in wavs:
        shutil.copy2(wav, share / wav.name)
    # The operator's settings for this site: the stand-ins' URLs (their keys are in the
    # credential files the install step wrote), as a drop-in; the shipped unit is untouched.
    dropin = p.machine / "etc" / "systemd" / "system" / "avatar-bridge.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in st.env().items() if not k.endswith(("_KEY", "_SECRET"))}
    (dropin / "stand-ins.conf").write_text(
        "[Service]\n" + "".join(f"Environment={k}={v}\n" for k, v in env.items())
    )
    (dropin / "transcode.conf").unlink(missing_ok=True)  # from an earlier run of this machine
    tried = dropin / "90-try.conf"
    tried.unlink(missing_ok=True)
    if extra:
        # --try: directives the shipped unit does not set, to see whether the media path
        # survives them (docs/deployment.md, "Hardening").
        tried.write_text("[Service]\n" + "".join(f"{x}\n" for x in extra))
    creds = p.machine / "etc" / "avatar-bridge" / "credentials"
    (creds / "stream_api_key").write_text(st.sim.stream.api_key)
    (creds / "stream_api_secret").write_text(st.sim.stream.api_secret)
    drain_say: subprocess.Popen[str] | None = None
    say = ["avatar-bridge", "say", "-q"]
    try:
        with step(results, part, "boot systemd as PID 1 in systemd-nspawn") as d:
            t0 = time.monotonic()
            await asyncio.to_thread(m.boot)
            state = ""
            while state not in ("running", "degraded"):
                # Early on the bus may not answer yet (empty output): ask again.
                if time.monotonic() - t0 > 120:
                    raise CheckFailed(f"system state {state!r}: {m.log.read_text()[-800:]}")
                await asyncio.sleep(0.5)
                state = await asyncio.to_thread(
                    m.sh, "systemctl is-system-running --wait 2>/dev/null || true", 120
                )
            version = m.sh("systemctl --version | head -1")
            d.append(f"{version}; {state} after {time.monotonic() - t0:.1f} s")
        with step(results, part, "docs' start commands: socket listening, service idle") as d:
            m.sh('set -e\nsudo() { "$@"; }\n' + doc_block("systemd-start"), timeout=60)
            sock = m.show("avatar-bridge.socket", "ActiveState")["ActiveState"]
            svc = m.show("avatar-bridge.service", "ActiveState")["ActiveState"]
            if sock != "active" or svc != "inactive":
                raise CheckFailed(f"socket {sock}, service {svc}")
            mode = m.sh("stat -c '%A %U:%G' /run/avatar-bridge/bridge.sock")
            d.append(f"socket active ({mode}), service inactive")
        with step(results, part, "client connects as alice: socket activation, READY") as d:
            t0 = time.monotonic()
            said = await asyncio.to_thread(
                run,
                m.cmd(*say, "--call", "default:deploy-systemd",
                      "/usr/local/share/deploy-check/beeps.wav", user="alice"),
                timeout=180,
            )  # fmt: skip
            events = say_events(said.stdout)
            if "speak_ended" not in events or "ERROR" in events:
                raise CheckFailed(f"the turn did not end cleanly: {said.stdout[-800:]}")
            props = m.show(
                "avatar-bridge.service", "ActiveState", "SubState", "StatusText", "MainPID",
                "NRestarts", "WatchdogUSec", "Type",
            )  # fmt: skip
            journal = m.sh("journalctl -u avatar-bridge.service -o cat --no-pager")
            ready = [ln for ln in journal.splitlines() if '"event": "ready"' in ln]
            if not ready or '"inherited_fds": 1' not in ready[-1]:
                raise CheckFailed(f"no ready event with the inherited socket: {journal[-800:]}")
            if props["SubState"] != "running" or not props["StatusText"]:
                raise CheckFailed(f"service {props}")
            d.append(
                f"started by the connection, READY (Type={props['Type']}), "
                f"STATUS={props['StatusText']!r}; media path "
                f"{events.get('media_path', {}).get('path')}; turn took "
                f"{time.monotonic() - t0:.1f} s"
            )
            pid = props["MainPID"]
        with step(results, part, "Stream stand-in received the avatar in sync") as d:
            results.facts["systemd_sync"] = st.check_sync("deploy-systemd", d)
        with step(results, part, "every hardening directive in force on the main process") as d:
            check_hardening(m, pid, d)
            d.append("ICE, DTLS and SRTP ran under them (the relay session above)")
            if extra:
                d.append("with --try " + " ".join(extra))
            nofile = m.sh(f"grep 'Max open files' /proc/{pid}/limits").split()
            d.append(f"LimitNOFILE=65536 -> {nofile[3]}/{nofile[4]} (soft/hard)")
            results.facts["systemd_nofile"] = nofile[3:5]
        with step(results, part, "watchdog pinged for longer than WatchdogSec") as d:
            started = float(
                m.show("avatar-bridge.service", "ExecMainStartTimestampMonotonic")[
                    "ExecMainStartTimestampMonotonic"
                ]
            )
            while True:
                now = float(m.sh("cut -d' ' -f1 /proc/uptime")) * 1e6
                if now - started > 25e6:
                    break
                await asyncio.sleep(1)
            props = m.show("avatar-bridge.service", "NRestarts", "WatchdogTimestampMonotonic",
                           "SubState", "WatchdogUSec")  # fmt: skip
            last_ping = float(props["WatchdogTimestampMonotonic"])
            if props["SubState"] != "running" or props["NRestarts"] != "0":
                raise CheckFailed(f"service {props}")
            if now - last_ping > 12e6:
                raise CheckFailed(f"last watchdog ping {(now - last_ping) / 1e6:.1f} s ago")
            d.append(
                f"WatchdogSec={props['WatchdogUSec']}, up {(now - started) / 1e6:.0f} s, last ping "
                f"{(now - last_ping) / 1e6:.1f} s ago, 0 restarts"
            )
        with step(results, part, "systemd-analyze security (inside the booted system)") as d:
            out = m.sh("systemd-analyze security avatar-bridge.service --no-pager | tail -1")
            score = re.search(r"exposure level .*?: ([\d.]+) (\S+)", out)
            if not score:
                raise CheckFailed(out)
            d.append(f"exposure {score.group(1)} {score.group(2)}")
            results.facts["systemd_exposure"] = float(score.group(1))
        with step(results, part, "systemctl stop mid-session: drain, exit 0, no session") as d:
            drain_say = spawn(
                m.cmd(*say, "--call", "default:deploy-systemd-drain",
                      "/usr/local/share/deploy-check/long.wav", user="alice"),
            )  # fmt: skip
            await wait_for_line(drain_say, '"event": "published"', 60)
            t0 = time.monotonic()
            await asyncio.to_thread(m.sh, "systemctl stop avatar-bridge.service", 90)
            took = time.monotonic() - t0
            props = m.show("avatar-bridge.service", "Result", "ExecMainStatus", "ActiveState")
            if props["Result"] != "success" or props["ExecMainStatus"] != "0":
                raise CheckFailed(f"service {props}")
            d.append(f"stopped in {took:.1f} s (TimeoutStopSec=45s), exit 0")
            results.facts["systemd_drain_s"] = round(took, 1)
            await st.no_session_left(d)
        with step(results, part, "re-activated, transcode path: codecs under the sandbox") as d:
            # The relay above forwards encoded packets; this session decodes the avatar and
            # encodes the call (libvpx, FFmpeg, the SDKs' codec threads) in the same sandbox.
            (dropin / "transcode.conf").write_text(
                "[Service]\nEnvironment=AVATAR_BRIDGE_OUTPUT__MEDIA_PATH=transcode\n"
            )
            m.sh("systemctl daemon-reload")
            said = await asyncio.to_thread(
                run,
                m.cmd(*say, "--call", "default:deploy-systemd-transcode",
                      "/usr/local/share/deploy-check/beeps.wav", user="alice"),
                timeout=180,
            )  # fmt: skip
            events = say_events(said.stdout)
            path = events.get("media_path", {}).get("path")
            if "speak_ended" not in events or "ERROR" in events or path != "transcode":
                raise CheckFailed(f"transcode turn: {said.stdout[-800:]}")
            pid = m.show("avatar-bridge.service", "MainPID")["MainPID"]
            check_hardening(m, pid, d)
            # Decoding and encoding in real time on two shared cores: under load (other jobs)
            # this path was seen at -98 ms, the relay within +-20; the bound only proves sync.
            results.facts["systemd_transcode_sync"] = st.check_sync(
                "deploy-systemd-transcode", d, bound_ms=150
            )
            t0 = time.monotonic()
            m.sh("systemctl stop avatar-bridge.service", 60)
            props = m.show("avatar-bridge.service", "Result", "ExecMainStatus", "NRestarts")
            if props["Result"] != "success" or props["ExecMainStatus"] != "0":
                raise CheckFailed(f"service {props}")
            d.append(f"idle stop {time.monotonic() - t0:.1f} s, exit 0")
            await st.no_session_left(d)
    finally:
        await asyncio.to_thread(stop_proc, drain_say)
        if m.leader:
            with contextlib.suppress(CheckFailed, subprocess.SubprocessError, OSError):
                journal = m.sh("journalctl -u avatar-bridge.service -o cat --no-pager", check=False)
                (p.work / "avatar-bridge.journal").write_text(journal + "\n")
        await asyncio.to_thread(m.shutdown)


async def run_inside(p: Paths, parts: list[str], extra: Sequence[str]) -> int:
    from bridge.sim import netns

    # SIGTERM (the outer process running out of time) cancels the run, so every finally block
    # (podman rm, the machine's poweroff) still runs.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    results = Results.load(p.results)
    if not netns.inside():
        results.add("run", "private network namespace", False, 0, "not inside bridge.sim.netns")
        return 1
    p.containers_conf.write_text(CONTAINERS_CONF)
    wavs = make_wavs(p.work / "wav")
    failed = False
    async with Standins() as st:
        try:
            if "container" in parts:
                try:
                    await container_part(p, results, st, wavs)
                except (CheckFailed, subprocess.SubprocessError, OSError, TimeoutError):
                    failed = True
            if "systemd" in parts:
                await systemd_part(p, results, st, wavs, extra)
        except (CheckFailed, subprocess.SubprocessError, OSError, TimeoutError):
            failed = True
    return 1 if failed else 0


def run_phase(p: Paths, parts: str, timeout: float, extra: Sequence[str]) -> int:
    """The run phase in the project's network namespace; its log in run.log, progress shown."""
    inner = [sys.executable, "-m", "bridge.sim.netns", "--", sys.executable, __file__, "run",
             "--parts", parts, "--cache", str(p.cache),
             *[f"--try={x}" for x in extra]]  # fmt: skip
    log_path = p.work / "run.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            inner, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

        def copy() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if line.startswith("[deploy-check]") or line.startswith("Traceback"):
                    print(line, end="", flush=True)

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print("deploy-check: out of time", file=sys.stderr)
            rc = 1
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(90)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            reader.join(10)
    # Whatever a killed run left behind in our own podman storage.
    for args in (("rm", "-f", "--ignore", CONTAINER), ("volume", "rm", "-f", STATE_VOLUME)):
        run(p.podman(*args), timeout=60, env=p.podman_env(), check=False)
    if rc != 0:
        print(f"deploy-check: the run's whole log is {log_path}", file=sys.stderr)
    return rc


# Checks each part must pass (the table's rows): fewer means a part stopped early.
EXPECTED_ROWS = {"container": 6, "systemd": 11}


def verdict(rows: Sequence[Row], parts: Sequence[str]) -> bool:
    complete = all(
        sum(1 for r in rows if r.part == part and r.ok) >= EXPECTED_ROWS[part] for part in parts
    )
    return complete and all(r.ok for r in rows)


# ----- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("phase", nargs="?", default="all", choices=["all", "prepare", "run"])
    ap.add_argument("--parts", default="container,systemd", help="comma-separated parts")
    ap.add_argument("--cache", type=Path, default=ROOT / ".deploy-cache")
    ap.add_argument("--timeout", type=float, default=2400, help="whole run, seconds")
    ap.add_argument(
        "--try",
        dest="extra",
        action="append",
        default=[],
        metavar="DIRECTIVE",
        help="add a [Service] directive to the unit (a drop-in), e.g. MemoryDenyWriteExecute=yes",
    )
    args = ap.parse_args(argv)
    p = Paths(args.cache.resolve())
    parts = [x for x in args.parts.split(",") if x]
    if not set(parts) <= set(EXPECTED_ROWS):
        ap.error(f"--parts: choose from {sorted(EXPECTED_ROWS)}")
    if os.geteuid() != 0:
        print("deploy-check: needs root (podman, systemd-nspawn, apt-get)", file=sys.stderr)
        return 2
    if args.phase == "run":
        return asyncio.run(run_inside(p, parts, args.extra))

    t_all = time.monotonic()
    p.work.mkdir(parents=True, exist_ok=True)
    p.rootfs.mkdir(parents=True, exist_ok=True)
    p.containers_conf.write_text(CONTAINERS_CONF)
    results = Results(p.results)
    results.save()
    rc = 0
    try:
        with step(results, "host", "tools installed (apt-get by package name)") as d:
            ensure_tools()
            d.append(run(["podman", "--version"], timeout=30).stdout.strip())
        if "container" in parts:
            prepare_container(p, results)
        if "systemd" in parts:
            prepare_systemd(p, results)
    except (CheckFailed, subprocess.SubprocessError, OSError):
        rc = 1
    if rc == 0 and args.phase == "all":
        remaining = max(60.0, args.timeout - (time.monotonic() - t_all))
        rc = run_phase(p, ",".join(parts), remaining, args.extra)
        results = Results.load(p.results)
        rc = rc or (0 if verdict(results.rows, parts) else 1)
    total = time.monotonic() - t_all
    print()
    print(format_table(results.rows))
    print(f"\ndeploy-check: {'PASSED' if rc == 0 else 'FAILED'} in {total:.0f} s")
    results.facts["total_s"] = round(total, 1)
    results.save()
    return rc


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
