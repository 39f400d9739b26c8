"""A real `edgekit agent serve` on a free loopback port, for the tests that talk to one."""

import json
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from edgekit.agent.client import AgentClient
from tests.conftest import ROOT


class Agent:
    """One `edgekit agent serve` process on a free loopback port."""

    def __init__(self, workdir: Path, token_file: Path, *extra: str):
        self.workdir, self.token_file = workdir, token_file
        self.token = token_file.read_text().strip()
        self.log = workdir.parent / f"{workdir.name}-agent.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgekit", "agent", "serve", "--host", "127.0.0.1", "--port", "0",
                 "--token-file", str(token_file), "--workdir", str(workdir), *extra],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        self.banner = self.proc.stdout.readline() if ready else ""
        found = re.search(r"http://127\.0\.0\.1:\d+", self.banner)
        assert found, f"the agent did not start: {self.banner!r} {self.log.read_text()}"
        self.url = found.group(0)
        assert httpx.get(f"{self.url}/v1/health", timeout=10).json() == {"ok": True}

    def client(self, **kwargs) -> AgentClient:
        return AgentClient(self.url, self.token, **kwargs)

    def get(self, path: str, token: str | None = None, **kwargs):
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.get(self.url + path, headers=headers, timeout=30, **kwargs)

    def post(self, spec: dict, files: dict[str, bytes], **kwargs):
        body, content_type = multipart(spec, files)
        return httpx.post(self.url + "/v1/jobs", content=body, timeout=30,
                          headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type}, **kwargs)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def multipart(spec: dict, files: dict[str, bytes], boundary: str = "edgekit-test-7d1f") -> tuple[bytes, str]:
    """A multipart body written by hand, so names reach the agent exactly as given."""
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{json.dumps(spec)}\r\n'.encode()]
    for name, data in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
