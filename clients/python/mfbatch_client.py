"""A client of `mfbatch serve --stdio` in the Python standard library (asyncio).

    async with await Client.spawn("mfbatch") as mf:
        await mf.launch("flow/1/train/1/a0", script="train.py", cpu="4")
        async for event in mf.events("flow/1/train/1/a0"):
            if event["event"] == "log":
                print(event["message"])
        print(mf.outcome("flow/1/train/1/a0")["exit_code"])

The protocol is in docs/serve-protocol.md. Lines can be long (a log line with its envelope), so
the pipe is read with a 16 MiB limit instead of asyncio's default 64 KiB.
"""

import asyncio
import json

LINE_LIMIT = 16 * 1024 * 1024
TERMINAL = ("exited", "launch_failed", "follow_failed")


class MfbatchError(Exception):
    def __init__(self, code, message, data=None):
        super().__init__(f"{message} (code {code})")
        self.code, self.data = code, data or {}


class Client:
    def __init__(self, process, reader, writer):
        self.process, self._reader, self._writer = process, reader, writer
        self._next_id = 0
        self._pending = {}
        self._queues = {}
        self._outcomes = {}
        # The latest (job_id, cursor) per key: what a restarted client resumes from.
        self.positions = {}
        self.hello = None
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def spawn(cls, program="mfbatch", *args, on_eof="detach", command=None, **kwargs):
        """Starts `program serve --stdio args...` (or `command + [serve, --stdio] + args`)."""
        argv = list(command or [program]) + ["serve", "--stdio", *args]
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT, **kwargs)
        client = cls(process, process.stdout, process.stdin)
        client.hello = await client.call(
            "hello", {"protocols": [1], "client": "mfbatch_client.py/1", "on_eof": on_eof})
        return client

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def call(self, method, params=None):
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        line = {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params or {}}
        self._writer.write(json.dumps(line).encode() + b"\n")
        await self._writer.drain()
        return await future

    async def launch(self, key, **options):
        """Launches once per key (a replayed key returns its job); options as `mfbatch run`'s."""
        self._queue(key)
        while True:
            try:
                return await self.call("launch", {"key": key, **options})
            except MfbatchError as e:
                if e.code != 5:  # busy: wait as told, then ask again
                    raise
                await asyncio.sleep(e.data.get("retry_after_ms", 1000) / 1000)

    async def follow(self, key, job_id=None, cursor=None):
        """Follows a job again (after a restart), from the last cursor: no line twice."""
        self._queue(key)
        job_id, cursor = job_id or self.positions[key][0], cursor or self.positions[key][1]
        return await self.call("follow", {"job_id": job_id, "cursor": cursor})

    async def events(self, key):
        """The key's events until its terminal one (exited, launch_failed, follow_failed)."""
        queue = self._queue(key)
        while True:
            event = await queue.get()
            if event is None:
                raise ConnectionError("mfbatch serve ended")
            yield event
            if event["event"] in TERMINAL:
                return

    def outcome(self, key):
        return self._outcomes.get(key)

    async def close(self, mode="detach"):
        if self._writer.is_closing():
            return
        try:
            await self.call("shutdown", {"mode": mode})
        except (ConnectionError, MfbatchError):
            pass
        self._writer.close()
        await self.process.wait()

    def _queue(self, key):
        return self._queues.setdefault(key, asyncio.Queue())

    async def _read(self):
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                message = json.loads(line)
                if "id" in message:
                    future = self._pending.pop(message["id"], None)
                    if future is None or future.done():
                        continue
                    if "error" in message:
                        error = message["error"]
                        future.set_exception(
                            MfbatchError(error["code"], error["message"], error.get("data")))
                    else:
                        future.set_result(message["result"])
                elif message.get("method") == "event":
                    self._on_event(message["params"])
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("mfbatch serve ended"))
            for queue in self._queues.values():
                queue.put_nowait(None)

    def _on_event(self, event):
        key = event.get("key")
        if key is None:
            return  # heartbeats and connection events
        job_id, cursor = self.positions.get(key, (None, ""))
        job_id = event.get("job_id") or job_id
        cursor = event.get("cursor", cursor)
        self.positions[key] = (job_id, cursor)
        if event["event"] == "exited":
            self._outcomes[key] = event
        self._queue(key).put_nowait(event)
