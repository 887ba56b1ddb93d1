"""The log agents next to atnorm: records/s through Fluentd and Fluent Bit, when on PATH.

With the same traffic, sender and receiver as the relay figure (`bench/relay.py`), one hop
each, acks on both sides (the agent's in_forward acks the sender, its out_forward waits
for the receiver's ack):

- `fluentd_record_transformer`: Fluentd with a record_transformer filter, the cheapest
  thing a Fluentd user does to every record (conf/bench/fluentd-record-transformer.conf);
- `fluent_bit_lua`: Fluent Bit with a Lua filter doing atnorm's envelope checks and
  rewrite_tag sending failures to `<tag>.rejected` (conf/bench/fluent-bit-lua.conf,
  conf/bench/atnorm-checks.lua);
- `fluentd_exec_filter_atnorm` and `fluentd_exec_filter_echo`: Fluentd's exec_filter
  running `atnorm exec-filter`, and the same with `cat` (conf/bench/fluentd-exec-filter.conf);
- `atnorm_relay`: `atnorm serve` filtering in its own process, measured in the same run.

Rows appear only for the agents found on PATH (`fluentd`, `fluent-bit`); with neither,
`bench_figures` returns no figure. The configurations take everything that changes from
run to run from environment variables (Fluentd's `"#{ENV['...']}"`, Fluent Bit's
`${...}`), listed in `ENVIRONMENT`; nothing is templated. They are read from the source
tree's conf/bench, or from the directory in ATNORM_BENCH_CONF_DIR.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .relay import CHUNK_RECORDS, ROUNDS, ChildProcessHop, StartHop, bench_payloads, measure_best, rounded, start_relay

FLUENTD = "fluentd"
FLUENT_BIT = "fluent-bit"
CONF_DIR_VARIABLE = "ATNORM_BENCH_CONF_DIR"

# What each configuration reads from the environment, and what the bench puts there.
ENVIRONMENT = {
    "ATNORM_BENCH_LISTEN_PORT": "the port the agent's in_forward listens on (the sender's)",
    "ATNORM_BENCH_FORWARD_PORT": "the port its out_forward sends to (the receiver's)",
    "ATNORM_BENCH_CONF_DIR": "this directory: where Fluent Bit finds atnorm-checks.lua",
    "ATNORM_BENCH_EXEC_COMMAND": "the exec_filter child: atnorm exec-filter, or cat",
}

# Row name → (agent executable, configuration file, exec_filter child or None).
ROWS = {
    "fluentd_record_transformer": (FLUENTD, "fluentd-record-transformer.conf", None),
    "fluent_bit_lua": (FLUENT_BIT, "fluent-bit-lua.conf", None),
    "fluentd_exec_filter_atnorm": (FLUENTD, "fluentd-exec-filter.conf", "atnorm"),
    "fluentd_exec_filter_echo": (FLUENTD, "fluentd-exec-filter.conf", "echo"),
}
START_SECONDS = 60  # an agent's start-up (Fluentd loads its plugins) until it listens


def conf_dir() -> Path:
    configured = os.environ.get(CONF_DIR_VARIABLE)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3] / "conf" / "bench"


def rows_on_path(which: Callable[[str], Optional[str]] = shutil.which) -> Dict[str, str]:
    """Row name → the agent's executable, for the rows whose agent `which` finds."""
    found = {agent: path for agent in (FLUENTD, FLUENT_BIT) if (path := which(agent))}
    return {row: found[agent] for row, (agent, _, _) in ROWS.items() if agent in found}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def exec_command(child: str, workdir: str) -> str:
    """The exec_filter child's command line: atnorm exec-filter in msgpack both ways (the
    pairing conf/fluentd/exec-filter.conf recommends), or `cat`, which echoes every byte."""
    if child == "echo":
        return "cat"
    return shlex.join([sys.executable, "-m", "atnorm", "exec-filter", "--in-format", "msgpack",
                       "--out-format", "msgpack", "--tag-key", "tag", "--time-key", "time", "--quiet",
                       "--log-file", os.path.join(workdir, "exec-filter.log")])


class AgentProcess(ChildProcessHop):
    """An agent (Fluentd or Fluent Bit) in a child process, forwarding to `downstream_port`."""

    def __init__(self, executable: str, conf: Path, child: Optional[str], downstream_port: int,
                 workdir: str) -> None:
        self.port = _free_port()
        environment = dict(os.environ, ATNORM_BENCH_LISTEN_PORT=str(self.port),
                           ATNORM_BENCH_FORWARD_PORT=str(downstream_port),
                           ATNORM_BENCH_CONF_DIR=str(conf.parent))
        if child is not None:
            environment["ATNORM_BENCH_EXEC_COMMAND"] = exec_command(child, workdir)
        self.name = Path(executable).name
        # --no-supervisor: Fluentd in one process, so stopping it stops its exec_filter child.
        command = ([executable, "-c", str(conf), "--no-supervisor"] if self.name == FLUENTD
                   else [executable, "-c", str(conf)])
        self.log_path = os.path.join(workdir, "agent.log")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=environment)
        self._wait_until_listening()

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        with open(self.log_path, "rb") as log:
            tail = log.read()[-2000:].decode("utf-8", "replace")
        raise RuntimeError(f"{self.name} did not listen on {self.port}: {tail}")


def start_agent(executable: str, conf: Path, child: Optional[str]) -> StartHop:
    return lambda downstream_port, workdir: AgentProcess(executable, conf, child, downstream_port, workdir)


def _version(executable: str) -> str:
    try:
        result = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (result.stdout.strip().splitlines() or ["unknown"])[0]


def bench_figures(records: int, invalid_ratio: float, rounds: int = ROUNDS) -> List[Dict[str, Any]]:
    """The agents figure: each agent row found on PATH and atnorm's relay, same run, best of
    `rounds` interleaved; ratios are atnorm over the agent doing a comparable job."""
    rows = rows_on_path()
    if not rows:
        return []
    directory = conf_dir()
    figure: Dict[str, Any] = {
        "figure": "agents (sender -> agent -> receiver, loopback, acks on)",
        "versions": {Path(executable).name: _version(executable) for executable in set(rows.values())},
    }
    missing = sorted({ROWS[row][1] for row in rows if not (directory / ROWS[row][1]).is_file()})
    if missing:
        figure["skipped"] = f"{', '.join(missing)} not in {directory}; set {CONF_DIR_VARIABLE}"
        return [figure]
    payloads = bench_payloads(max(records, CHUNK_RECORDS), invalid_ratio)
    starts = {row: start_agent(executable, directory / ROWS[row][1], ROWS[row][2])
              for row, executable in rows.items()}
    starts["atnorm_relay"] = start_relay([])
    try:
        best = measure_best(payloads, starts, rounds)
    except (RuntimeError, OSError, asyncio.TimeoutError) as error:
        # An agent that does not start or stalls: said in the figure, the others still print.
        figure["failed"] = f"{type(error).__name__}: {error}"
        return [figure]

    def ratio(name: str, base: str) -> Optional[float]:
        if name not in best or base not in best or not best[base]["records_per_s"]:
            return None
        return round(best[name]["records_per_s"] / best[base]["records_per_s"], 2)

    figure.update(records=sum(count for _, count in payloads), invalid_ratio=invalid_ratio)
    for name in starts:
        figure[f"{name}_records_per_s"] = round(best[name]["records_per_s"])
        figure[f"{name}_cpu_s_per_1m_records"] = rounded(best[name]["cpu_s_per_1m"])
        figure[f"{name}_peak_rss_mib"] = rounded(best[name]["peak_rss_mib"])
    comparisons = {
        "atnorm_relay_vs_fluentd_record_transformer": ratio("atnorm_relay", "fluentd_record_transformer"),
        "atnorm_relay_vs_fluent_bit_lua": ratio("atnorm_relay", "fluent_bit_lua"),
        "fluentd_exec_filter_ratio": ratio("fluentd_exec_filter_atnorm", "fluentd_exec_filter_echo"),
    }
    figure.update({key: value for key, value in comparisons.items() if value is not None})
    figure["all_acked"] = all(best[name]["acked"] for name in starts)
    return [figure]
