"""baresip (Debian package, 1.0.0) as a PBX-side user agent in tests: a real SIP stack nobody
here wrote, headless, one config directory per instance, driven through its ctrl_tcp module
(netstring-framed JSON: commands in, responses and events out), stopped by PID.

    ua = Baresip(procs, tmp_path, user="+441632960100", sip_port=p, outbound=("127.0.0.1", sbc_port),
                 wav=tone_wav(tmp_path))
    await ua.start()
    await ua.command("dial", "sip:+14255550100@127.0.0.1:5060")
    ev = await ua.wait_event("CALL_ESTABLISHED")      # ev["id"], ev["peeruri"], ev["direction"]
    ua.rtp_stats()        # [(tx packets, rx packets, rx errors)] per ended audio stream, in order
    ua.sip_received("REFER")   # the text of each REFER it received (its SIP trace, -s)
    await ua.close()      # ctrl connection closed; the process is stopped by the ProcessManager

What baresip 1.0.0 does that the tests rely on (read in its source, seen on this machine):
- `answermode=auto` answers every incoming call; `regint=0`: no REGISTER; `outbound=` makes
  every request of the account go through that proxy (a preloaded Route), the INVITE to a
  transfer target included.
- REFER (call.c): 202, a NOTIFY "SIP/2.0 100 Trying" (message/sipfrag), then the menu module
  dials the Refer-To URI as a new call; when it is answered, NOTIFY "SIP/2.0 200 OK" (the
  transferor hangs up the old call). It does not copy Referred-By into that INVITE.
- audio: `aufile` plays a WAV file as the microphone (the test's tone), `aubridge` is a player
  that needs no sound card; with `rtp_stats yes` each audio stream prints its packet counts
  (Transmit / Receive / errors) to stdout when it ends.
- events (ctrl_tcp): CALL_INCOMING, CALL_RINGING (a 180 arrived), CALL_ESTABLISHED,
  CALL_CLOSED, TRANSFER (a REFER came), CALL_RTPESTAB, ... with "id" (the SIP Call-ID) and "param".
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import struct
import wave
from pathlib import Path
from typing import Any, Callable

from .ports import free_port
from .procs import ProcessManager, wait_port

__all__ = ["Baresip", "baresip_binary", "tone_wav", "TONE_HZ"]

TONE_HZ = 440
MODULES = "/usr/lib/baresip/modules"


def baresip_binary() -> str:
    path = shutil.which("baresip")
    if not path:
        raise FileNotFoundError("baresip not found (apt-get install baresip)")
    return path


def tone_wav(directory: Path, hz: int = TONE_HZ, seconds: int = 30) -> Path:
    """A 8 kHz mono 16-bit WAV of a sine at `hz` (what the PBX's caller says)."""
    path = Path(directory) / f"tone{hz}.wav"
    if not path.exists():
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * i / 8000)))
                                   for i in range(8000 * seconds)))
    return path


_STATS = re.compile(r"audio\s+Transmit:\s+Receive:\s*\npackets:\s+(\d+)\s+(\d+)\n.*?\nerrors:\s+(-?\d+)\s+(-?\d+)",
                    re.S)


_TRACE = re.compile(r"#\r?\n(?:UDP|TCP|TLS) (\S+) -> (\S+)\r?\n(.*?)\x1b\[;m", re.S)


class Baresip:
    def __init__(self, procs: ProcessManager, workdir: Path, *, user: str, sip_port: int,
                 outbound: tuple[str, int] | None = None, wav: Path | None = None,
                 codecs: tuple[str, ...] = ("PCMA", "PCMU"), answer: bool = True,
                 name: str = "baresip", host: str = "127.0.0.1"):
        self.procs = procs
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.user = user
        self.host = host
        self.sip_port = sip_port
        self.ctrl_port = free_port("tcp")
        self.events: list[dict[str, Any]] = []
        self.transcript: list[str] = []
        self._changed = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self._responses: dict[str, dict] = {}
        self._token = 0
        self.process = None
        wav = wav or tone_wav(self.dir)
        params = ["regint=0", f"audio_codecs={','.join(codecs)}"]
        if answer:
            params.append("answermode=auto")
        if outbound is not None:
            params.append(f'outbound="sip:{outbound[0]}:{outbound[1]};transport=udp"')
        (self.dir / "accounts").write_text(f"<sip:{user}@{host}>;" + ";".join(params) + "\n")
        (self.dir / "config").write_text("\n".join([
            "poll_method epoll",
            f"net_interface {host}",         # SDP and RTP there, not on the host's own address
            f"sip_listen {host}:{sip_port}",
            "audio_player aubridge,nowhere",
            f"audio_source aufile,{wav}",
            "audio_alert aubridge,nowhere",
            "rtp_stats yes",
            f"module_path {MODULES}",
            "module g711.so", "module aufile.so", "module aubridge.so",
            "module_tmp account.so",
            "module_app menu.so", "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            "",
        ]))

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.host}:{self.sip_port}"

    # ------------------------------------------------------------------ lifecycle
    async def start(self, timeout: float = 15.0) -> "Baresip":
        argv = [baresip_binary(), "-f", str(self.dir), "-s"]  # -s: every SIP message to stdout
        self.process = self.procs.start(self.name, argv, cwd=self.dir, logdir=self.dir)
        await asyncio.to_thread(wait_port, "127.0.0.1", self.ctrl_port, "tcp", timeout=timeout,
                                process=self.process)
        await asyncio.to_thread(wait_port, self.host, self.sip_port, "udp", timeout=timeout,
                                process=self.process)
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.ctrl_port)
        self._task = asyncio.get_running_loop().create_task(self._read())
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # ------------------------------------------------------------------ ctrl_tcp
    async def _read(self) -> None:
        assert self._reader is not None
        buf = b""
        while True:
            data = await self._reader.read(65536)
            if not data:
                return
            buf += data
            while True:
                colon = buf.find(b":")
                if colon < 0 or not buf[:colon].isdigit():
                    break
                n = int(buf[:colon])
                if len(buf) < colon + 1 + n + 1:
                    break
                payload, buf = buf[colon + 1: colon + 1 + n], buf[colon + 2 + n:]
                msg = json.loads(payload)
                self.transcript.append(json.dumps(msg))
                if msg.get("response"):
                    self._responses[str(msg.get("token"))] = msg
                else:
                    self.events.append(msg)
                self._changed.set()

    async def command(self, command: str, params: str = "", timeout: float = 10.0) -> dict:
        assert self._writer is not None
        self._token += 1
        token = str(self._token)
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._writer.write(str(len(body)).encode() + b":" + body + b",")
        await self._writer.drain()
        return await self._until(lambda: self._responses.get(token), timeout, f"response to {command}")

    async def wait_event(self, kind: str, timeout: float = 10.0,
                         where: Callable[[dict], bool] = lambda e: True) -> dict:
        return await self._until(lambda: next((e for e in self.events if e.get("type") == kind and where(e)), None),
                                 timeout, f"event {kind}")

    async def _until(self, find: Callable[[], Any], timeout: float, what: str) -> Any:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = find()
                    if found is not None:
                        return found
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{self.name}: no {what} within {timeout}s\n{self.describe()}") from None

    # ------------------------------------------------------------------ what it printed
    def log(self) -> str:
        return self.process.stdout_text() + self.process.stderr_text() if self.process else ""

    def rtp_stats(self) -> list[tuple[int, int, int]]:
        """(packets sent, packets received, receive errors) of each audio stream that ended."""
        return [(int(m.group(1)), int(m.group(2)), int(m.group(4))) for m in _STATS.finditer(self.log())]

    def sip_received(self, method: str) -> list[str]:
        """The `method` requests baresip received, as its SIP trace (-s) printed them: blocks
        "#", "UDP from -> to", the message, between colour codes."""
        mine = f"{self.host}:{self.sip_port}"
        return [m.group(3) for m in _TRACE.finditer(self.log())
                if m.group(2) == mine and m.group(3).startswith(f"{method} ")]

    def describe(self) -> str:
        log = re.sub(r"(\[\d+:\d+:\d+\] audio=\S+ \(bit/s\)\s*)+", "", self.log())
        return (f"--- {self.name} events ---\n" + "\n".join(self.transcript[-60:])
                + f"\n--- {self.name} output ---\n" + log[-6000:])
