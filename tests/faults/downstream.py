"""A forward-protocol aggregator as its own process, for `kill -9` of the downstream.

    python downstream.py PORT OUT_FILE

Listens on 127.0.0.1:PORT (0: any; the port is printed as `listening PORT`), writes one
line per received record to OUT_FILE (`seq` of the record) and only then acks its chunk,
as an aggregator acks what it has stored: a kill loses nothing it acked. The lines are
written to the kernel (os.write) before the ack; a kill -9 of the process keeps them.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import seq_of  # noqa: E402

from forward_receiver import ForwardReceiver  # noqa: E402


class StoringReceiver(ForwardReceiver):
    def __init__(self, out: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out = out

    async def _handle(self, connection: int, message: Any, writer: asyncio.StreamWriter) -> bool:
        if message is None or not isinstance(message, list) or len(message) < 2:
            return True
        frame = self._decode(connection, message)
        lines = "".join(f"{seq_of(record)}\n" for _, record in frame.entries
                        if not frame.tag.startswith("atnorm."))
        os.write(self.out, lines.encode())
        if frame.chunk is not None:
            writer.write(msgpack.packb({"ack": frame.chunk}))
            await writer.drain()
        return True


async def main(port: int, out_path: str) -> None:
    out = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    receiver = await StoringReceiver(out, port=port).start()
    print(f"listening {receiver.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
